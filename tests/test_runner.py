"""Run: many metered calls at once, one Stop for all, on_end in a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from core.config import make_endpoint
from core.i18n import catalog, set_language, t
from core.metering import Call
from core.providers import Message
from core.runner import Run
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOllamaServer, FakeOpenAIServer
from tests.timing import NEVER_S, WAIT_S, wait_until

HELLO = [Message("user", "Hello")]


def openai_endpoint(server):
    return make_endpoint("Fake", "custom", base_url=server.url, api_key=API_KEY, source="env")


def test_calls_run_at_once_and_a_slow_or_failing_one_holds_up_nobody(db):
    with FakeOpenAIServer(api_key=API_KEY, tokens=12, slow_first_token=NEVER_S) as server:
        ep = openai_endpoint(server)
        slow, fast, failing = (Call(ep, m, HELLO, user_id="ana")
                               for m in ("fault-slow", "gpt-4o-mini", "fault-500"))
        ended: list[tuple[str, str, str]] = []
        run = Run([slow, fast, failing], on_end=lambda c: ended.append(
            (c.model, c.status, threading.current_thread().name)))
        run.start()
        # The fast and the failing calls end while the slow one waits for its first token,
        # which the server holds back until the test releases it.
        wait_until(lambda: len(ended) == 2, what="the two quick calls to end")
        assert not run.finished
        assert {(m, s) for m, s, _ in ended} == {("gpt-4o-mini", "ok"), ("fault-500", "error")}
        server.release_slow()
        assert run.wait(WAIT_S)
    assert ended[-1][:2] == ("fault-slow", "ok")
    assert all(name.startswith("owngpt-on-end") for *_, name in ended)
    rows = call_rows(db)
    assert sorted((r["model"], r["status"]) for r in rows) == [
        ("fault-500", "error"), ("fault-slow", "ok"), ("gpt-4o-mini", "ok")]
    assert fast.text.startswith("Echo: Hello") and failing.error is not None


@pytest.fixture(params=["openai", "ollama"])
def slow_server(request) -> Iterator[tuple[str, FakeOpenAIServer | FakeOllamaServer]]:
    """A server of each protocol that waits 30 s for its first token, or streams for 50 s."""
    settings = {"slow_first_token": NEVER_S, "rate": 100, "tokens": int(NEVER_S * 100)}
    if request.param == "openai":
        with FakeOpenAIServer(api_key=API_KEY, **settings) as server:
            yield request.param, server
    else:
        with FakeOllamaServer(**settings) as server:
            yield request.param, server


@pytest.mark.parametrize("moment", ["before the first token", "mid-answer"])
def test_one_stop_ends_every_call_and_drops_every_connection(db, slow_server, moment):
    kind, server = slow_server
    if kind == "openai":
        ep, model = openai_endpoint(server), "gpt-4o-mini"
    else:
        ep, model = make_endpoint("Ollama", "ollama", base_url=server.url), "llama3.2:1b"
    if moment == "before the first token":
        model = "fault-slow"
    calls = [Call(ep, model, HELLO, user_id="ana") for _ in range(2)]
    ended: list[str] = []
    run = Run(calls, on_end=lambda c: ended.append(c.status)).start()
    wait_until(lambda: len(server.requests) == 2, what="both requests to arrive")
    if moment == "mid-answer":
        wait_until(lambda: all(c.text for c in calls), what="both answers to start")
    run.stop()
    # Without cancellation the server would wait, or stream, far longer than any deadline
    # here: the run ends and both connections close only because Stop cancelled them. How
    # soon is measured by bench.stop_latency.
    assert run.wait(WAIT_S), "the run did not end after Stop"
    assert server.wait_for_hangups(2, timeout=WAIT_S), "a connection stayed open"
    assert ended == ["stopped", "stopped"]
    rows = call_rows(db)
    assert [r["status"] for r in rows] == ["stopped", "stopped"]
    if moment == "mid-answer":  # the partial answer is counted, estimated, and priced
        assert all(r["output_chars"] > 0 and r["output_tokens"] > 0 and r["estimated"]
                   for r in rows)
        assert all(c.text.startswith("Echo") and c.cost is not None for c in calls)


def test_a_run_stopped_before_it_starts_sends_nothing(db, openai_server):
    before = len(openai_server.requests)
    call = Call(openai_endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana")
    run = Run([call])
    run.stop()
    assert run.start().wait(WAIT_S)
    assert call.status == "stopped" and len(openai_server.requests) == before
    assert call_rows(db) == []


def test_on_end_outlives_the_thread_that_started_the_run(db, openai_server):
    """What a Stop does to the script run: the starter is gone, saving still happens."""
    saved: dict[str, str] = {}
    runs: list[Run] = []

    def script_run() -> None:
        set_language("zh")  # on_end speaks the starter's language (its context)
        call = Call(openai_endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana")
        runs.append(Run([call], on_end=lambda c: saved.update(
            text=c.text, note=t("chat.stopped"))).start())

    script = threading.Thread(target=script_run)
    script.start()
    script.join()
    assert runs[0].wait(WAIT_S)
    assert saved["text"].startswith("Echo: Hello")
    assert saved["note"] == catalog("zh")["chat.stopped"] != t("chat.stopped")


def test_a_failing_on_end_does_not_keep_the_run_from_finishing(db, openai_server):
    ep = openai_endpoint(openai_server)
    calls = [Call(ep, "gpt-4o-mini", HELLO, user_id="ana") for _ in range(2)]
    seen: list[Call] = []

    def on_end(call: Call) -> None:
        seen.append(call)
        if len(seen) == 1:
            raise RuntimeError("the conversation could not be saved")

    run = Run(calls, on_end=on_end).start()
    assert run.wait(WAIT_S) and len(seen) == 2
    assert [c.status for c in calls] == ["ok", "ok"]


def test_an_empty_run_is_finished_at_once():
    run = Run([]).start()
    assert run.finished and run.wait(0)
