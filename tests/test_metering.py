"""Every call leaves exactly one row, whatever happens to it, and never the key."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from core import store
from core.config import make_endpoint
from core.metering import Call
from core.pricing import Price, cost, set_price
from core.providers import Message, Params, ProviderError, Usage
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.timing import NEVER_S, WAIT_S, wait_until

HELLO = [Message("user", "Hello")]


def endpoint(server, key=API_KEY):
    return make_endpoint("Fake", "custom", base_url=server.url, api_key=key, source="env")


def test_a_finished_call_logs_one_ok_row(db, openai_server):
    call = Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana").run_sync()
    [row] = call_rows(db)
    assert row["status"] == "ok" and row["user_id"] == "ana" and row["model"] == "gpt-4o-mini"
    assert row["output_tokens"] == 12 and not row["estimated"]
    assert row["cost_usd"] > 0  # a local gateway to a model the catalog knows is priced
    assert row["ttft_s"] > 0 and row["total_s"] >= row["ttft_s"]
    assert call.row_id == row["id"]


def test_a_failed_call_logs_one_error_row_with_its_kind(db, openai_server):
    call = Call(endpoint(openai_server, "sk-wrong-0000000000"), "gpt-4o-mini", HELLO,
                user_id="ana").run_sync()
    assert isinstance(call.error, ProviderError) and call.status == "error"
    [row] = call_rows(db)
    assert (row["status"], row["error_kind"], row["http_status"]) == ("error", "auth", 401)
    assert "sk-wrong-0000000000" not in (row["error_detail"] or "")


def test_a_stream_dying_mid_answer_keeps_the_partial_in_the_log(db, openai_server):
    call = Call(endpoint(openai_server), "fault-disconnect", HELLO, user_id="ana").run_sync()
    [row] = call_rows(db)
    assert row["status"] == "error" and row["error_kind"] == "connection"
    assert row["output_chars"] == len(call.text) > 0


def test_stop_from_another_thread_during_a_slow_first_token(db):
    with FakeOpenAIServer(api_key=API_KEY, slow_first_token=NEVER_S) as server:
        call = Call(endpoint(server), "fault-slow", HELLO, user_id="ana")
        caller = threading.Thread(target=call.run_sync, kwargs={"timeout": WAIT_S})
        caller.start()
        wait_until(lambda: server.requests, what="the request to arrive")
        call.stop()  # the first token would never come: only the stop ends this call
        caller.join(WAIT_S)
        assert not caller.is_alive()
    [row] = call_rows(db)
    assert row["status"] == "stopped" and row["error_kind"] is None


def test_no_usage_from_the_server_is_estimated_and_flagged(db, openai_server):
    Call(endpoint(openai_server), "fault-no-usage", HELLO, user_id="ana").run_sync()
    [row] = call_rows(db)
    assert row["estimated"] and row["output_tokens"] > 0


def test_the_key_never_reaches_the_database(db, openai_server):
    Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana").run_sync()
    Call(endpoint(openai_server, "sk-wrong-0000000000"), "x", HELLO, user_id="ana").run_sync()
    with db.connect() as conn:
        dump = "\n".join(str(tuple(r)) for t in store.metadata.sorted_tables
                         for r in conn.execute(select(t)))
    assert API_KEY not in dump and "sk-wrong-0000000000" not in dump


def test_ollama_calls_are_logged_too(db, ollama_server):
    ollama = make_endpoint("Ollama", "ollama", base_url=ollama_server.url)
    Call(ollama, "llama3.2:1b", HELLO, Params(), user_id="bo").run_sync()
    Call(ollama, "mistral:7b", HELLO, Params(), user_id="bo").run_sync()
    rows = call_rows(db)
    assert [(r["status"], r["error_kind"], r["provider"]) for r in rows] == [
        ("ok", None, "ollama"), ("error", "model_not_found", "ollama")]


def test_prices_deployment_override_then_catalog_then_unknown(db):
    usage = Usage(input_tokens=1_000, cached_input_tokens=200, output_tokens=500)
    now = datetime.now(UTC)
    openai = make_endpoint("OpenAI", "openai", api_key="sk-x" * 4)
    assert cost(openai, "gpt-4o-mini", usage, now) == Decimal("0.000435")
    assert cost(openai, "no-such-model", usage, now) is None  # unknown, not 0
    set_price("*", "no-such-model", Price(Decimal(1), Decimal(2)))
    assert cost(openai, "no-such-model", usage, now) == Decimal("0.002")  # for every user
    local = make_endpoint("vLLM", "custom", base_url="http://127.0.0.1:8000")
    assert cost(local, "gpt-4o-mini", usage, now) == Decimal("0.000435")
    assert cost(local, "my-own-model", usage, now) == 0
