"""The chat turn without Streamlit: what a request carries, the answer saved from the worker,
two tabs at once, titles that never hold an answer up. Against the fake servers over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from core import chat, compare, metering
from core import conversations as convs
from core.config import make_endpoint
from core.conversations import ChatMessage
from core.conversations_context import sendable
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.test_app import app, screen_text
from tests.test_compare_page import compare_page
from tests.timing import WAIT_S, wait_until

ME = "ana@example.com"
ROOT = Path(__file__).resolve().parents[1]


def endpoint(server):
    return make_endpoint("Fake", "custom", base_url=server.url, api_key=API_KEY, source="env")


def settings(server, model: str = "gpt-4o-mini", **kw) -> chat.Settings:
    return chat.Settings(endpoint(server), model, **kw)


def sent_users(server) -> list[str]:
    """The user messages of the last request the fake server saw."""
    return [m["content"] for m in server.requests[-1]["messages"] if m["role"] == "user"]


def ask(server, prompt: str, conv: convs.Conversation | None = None, **kw) -> chat.ChatTurn:
    """Send one message below the end of the conversation's branch and wait for the answer."""
    thread = convs.load(ME, conv.id) if conv is not None else None
    turn = chat.send(ME, prompt, kw.pop("s", None) or settings(server),
                     conversation=thread.conversation if thread else None,
                     parent_id=thread.leaf_id if thread else None,
                     seq=thread.seq if thread else 0, **kw).start()
    assert turn.wait(WAIT_S), "the answer was never saved"
    return turn


def q(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def a(text: str, status: str = "ok") -> ChatMessage:
    return ChatMessage("assistant", text, status=status)


# --- what a request carries ----------------------------------------------------------------


@pytest.mark.parametrize(("branch", "sent"), [
    # A question whose process died before any answer was saved: left out, asked once.
    ([q("q1"), a("a1"), q("q2"), q("q3")], ["q1", "a1", "q3"]),
    ([q("q1"), a("", "error"), q("q2")], ["q2"]),
    ([q("q1"), a("half an answer", "error"), q("q2")], ["q2"]),
    ([q("q1"), a("", "interrupted"), q("q2")], ["q2"]),
    ([q("q1"), a("cut short", "interrupted"), q("q2")], ["q1", "cut short", "q2"]),
    ([q("q1"), a("stopped here", "stopped"), q("q2")], ["q1", "stopped here", "q2"]),
    ([q("q1"), a("", "stopped"), q("q2"), a("a2"), q("q3")], ["q2", "a2", "q3"]),
    ([q("q1"), q("q2"), q("q3"), a("a3"), q("q4")], ["q3", "a3", "q4"]),
])
def test_an_unanswered_question_is_left_out_and_each_question_is_sent_once(branch, sent):
    assert [m.text for m in sendable(branch)] == sent


def test_a_turn_sends_its_branch_and_saves_the_answer_from_the_worker(db, openai_server):
    first = ask(openai_server, "Hello flow", s=settings(openai_server, system="Be brief."))
    assert openai_server.requests[-1]["messages"][0] == {"role": "system",
                                                         "content": "Be brief."}
    conv = convs.get(ME, first.cid)
    second = ask(openai_server, "And again", conv)
    assert sent_users(openai_server) == ["Hello flow", "And again"]
    saved = convs.path(ME, first.cid)
    assert [(m.role, m.status) for m in saved] == [("user", "ok"), ("assistant", "ok")] * 2
    assert saved[-1].text.startswith("Echo: And again") and saved[-1].call_id is not None
    assert [r["conversation_id"] for r in call_rows(db)] == [first.cid, second.cid]
    assert convs.get(ME, first.cid).system == ""  # the settings it was last sent with


def test_after_a_question_lost_its_answer_the_next_request_asks_each_question_once(
        db, openai_server):
    turn = ask(openai_server, "q1")
    # A process killed mid-answer left q2 with no saved answer: the branch ends at q2.
    conv = convs.get(ME, turn.cid)
    thread = convs.load(ME, conv.id)
    convs.add_message(ME, conv.id, q("q2"), parent_id=thread.leaf_id, seq=thread.seq)
    ask(openai_server, "q3", conv)
    assert sent_users(openai_server) == ["q1", "q3"]


def test_two_tabs_sending_into_one_conversation_at_once_write_one_question(
        db, openai_server):
    conv = convs.get(ME, ask(openai_server, "first").cid)
    thread = convs.load(ME, conv.id)  # both tabs drew the conversation as it is now
    gate = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def tab(name: str) -> None:
        gate.wait()
        try:
            outcome[name] = chat.send(ME, f"from {name}", settings(openai_server),
                                      conversation=thread.conversation,
                                      parent_id=thread.leaf_id, seq=thread.seq).start()
        except convs.ConversationChanged as exc:
            outcome[name] = exc

    tabs = [threading.Thread(target=tab, args=(n,)) for n in ("one", "two")]
    for th in tabs:
        th.start()
    for th in tabs:
        th.join(WAIT_S)
    turns = [v for v in outcome.values() if isinstance(v, chat.ChatTurn)]
    refused = [v for v in outcome.values() if isinstance(v, convs.ConversationChanged)]
    assert len(turns) == 1 and len(refused) == 1
    assert turns[0].wait(WAIT_S)
    users = [m.text for m in convs.path(ME, conv.id) if m.role == "user"]
    assert users == ["first", turns[0].question.text]
    assert sent_users(openai_server) == users


# --- titles --------------------------------------------------------------------------------


@pytest.fixture
def hanging_server():
    """A server whose "fault-slow" model takes ten minutes to its first token."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=12, slow_first_token=600) as server:
        yield server


def test_a_title_model_that_hangs_holds_up_nothing_and_can_be_cancelled(db, hanging_server):
    text = "How do I keep sourdough starter alive over a long holiday?"
    turn = chat.send(ME, text, settings(hanging_server), ask_title=True,
                     title_model="fault-slow").start()
    # The answer is saved and the turn finished while the title's request still hangs.
    assert turn.wait(WAIT_S), "the answer waited for its title"
    wait_until(lambda: [r["source"] for r in call_rows(db)] == ["chat", "title"],
               what="the title's call to go out")
    assert turn.title is not None and not turn.title.finished
    [question, answer] = convs.path(ME, turn.cid)
    assert answer.status == "ok" and answer.text.startswith("Echo: How do I keep")
    assert convs.get(ME, turn.cid).title == convs.title_from_text(text)
    # The conversation goes on meanwhile: the next message is not told "changed elsewhere".
    ask(hanging_server, "And in a warm kitchen?", convs.get(ME, turn.cid))
    turn.cancel_title()
    assert turn.title.wait(WAIT_S)
    assert [(r["source"], r["status"]) for r in call_rows(db)] == [
        ("chat", "ok"), ("title", "stopped"), ("chat", "ok")]
    assert convs.get(ME, turn.cid).title == convs.title_from_text(text)
    assert hanging_server.wait_for_hangups(1, timeout=WAIT_S)  # the request was dropped


def test_a_failed_title_changes_nothing_else_and_a_good_one_replaces_the_first(
        db, openai_server):
    failed = chat.send(ME, "Plan a trip to Kyoto", settings(openai_server), ask_title=True,
                       title_model="fault-500").start()
    assert failed.wait(WAIT_S) and failed.title is not None and failed.title.wait(WAIT_S)
    assert convs.get(ME, failed.cid).title == "Plan a trip to Kyoto"
    assert [m.status for m in convs.path(ME, failed.cid)] == ["ok", "ok"]
    good = chat.send(ME, "Plan a trip to Osaka", settings(openai_server),
                     ask_title=True).start()
    assert good.wait(WAIT_S) and good.title is not None and good.title.wait(WAIT_S)
    # The fake echoes the instruction, so the model's "title" starts with "Echo".
    assert convs.get(ME, good.cid).title.startswith("Echo")
    assert [(r["source"], r["status"]) for r in call_rows(db)] == [
        ("chat", "ok"), ("title", "error"), ("chat", "ok"), ("title", "ok")]


def test_a_rename_made_while_the_title_is_asked_stands(db, openai_server):
    turn = chat.send(ME, "Name my cat", settings(openai_server), ask_title=True,
                     title_model="fault-slow").start()  # the title comes 1.5 s after
    assert turn.wait(WAIT_S)
    convs.rename(ME, turn.cid, "Cats")
    assert turn.title is not None and turn.title.wait(WAIT_S)
    assert [(r["source"], r["status"]) for r in call_rows(db)] == [("chat", "ok"),
                                                                  ("title", "ok")]
    assert convs.get(ME, turn.cid).title == "Cats"


# --- an answer exists from the moment its request goes out ---------------------------------


@pytest.fixture
def streaming_server():
    """Streams 1,000 tokens at 50 a second: 20 s, far longer than any test waits for."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=1000, rate=50, slow_first_token=30) as server:
        yield server


def answer_row(cid: str) -> ChatMessage:
    return [m for m in convs.path(ME, cid) if m.role == "assistant"][-1]


def test_the_answer_is_saved_running_and_its_heartbeat_writes_the_text_so_far(
        db, streaming_server, monkeypatch):
    monkeypatch.setattr(metering, "HEARTBEAT_S", 0.05)
    turn = chat.send(ME, "Tell me a long story", settings(streaming_server))
    # Written before the request goes out: the branch ends with the answer, running.
    assert [(m.role, m.status, m.text) for m in convs.path(ME, turn.cid)] == [
        ("user", "ok", "Tell me a long story"), ("assistant", "running", "")]
    assert turn.answer.call_key == turn.call.key and convs.get(ME, turn.cid).seq == turn.seq
    turn.start()
    try:
        assert chat.live(turn.answer.id) is turn  # a reload in this process finds it
        first = wait_until(lambda: answer_row(turn.cid).text, what="a heartbeat with text")
        assert first.startswith("Echo")
        wait_until(lambda: len(answer_row(turn.cid).text) > len(first), what="a later beat")
        assert answer_row(turn.cid).status == "running"
    finally:
        turn.stop()
    assert turn.wait(WAIT_S)
    saved = answer_row(turn.cid)
    assert (saved.status, saved.id, saved.call_id) == ("stopped", turn.answer.id,
                                                       turn.call.row_id)
    assert saved.text == turn.call.text and chat.live(turn.answer.id) is None
    assert convs.get(ME, turn.cid).seq == turn.seq  # completing it is no edit to be told of


# A second app process: one chat turn, or one compare turn, heartbeats every 0.1 s.
CHILD = textwrap.dedent("""
    import sys
    from core import chat, compare, metering
    from core.config import make_endpoint

    metering.HEARTBEAT_S = 0.1
    what, user, key, *urls = sys.argv[1:]
    eps = [make_endpoint(f"E{i}", "custom", base_url=u, api_key=key, source="env")
           for i, u in enumerate(urls)]
    if what == "chat":
        turn = chat.send(user, "Tell me a long story",
                         chat.Settings(eps[0], "gpt-4o-mini")).start()
        print(turn.cid, flush=True)
        turn.wait(60)
    else:
        cid = compare.create(user, [compare.Pane("E0", "gpt-4o-mini"),
                                    compare.Pane("E1", "gpt-4o-mini")])
        print(cid, flush=True)
        compare.send(user, cid, "Tell me a long story",
                     {e.name: e for e in eps}).run.wait(60)
""")


def child(what: str, user: str, *servers) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, what, user, API_KEY,
                             *(s.url for s in servers)], cwd=ROOT, env={**os.environ},
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)


def test_a_process_killed_mid_answer_leaves_the_answer_interrupted_with_its_text(
        db, streaming_server, openai_server):
    proc, cid = child("chat", ME, streaming_server)
    try:
        beat = wait_until(lambda: (m := answer_row(cid)).text and m,
                          what="the other process's answer with text")
    finally:
        killed(proc)
    assert beat.status == "running"
    # The app starts again (a restart marks what a dead process left): the answer is
    # settled with its call, its text so far kept.
    wait_until(lambda: metering.mark_interrupted(db, stale_after_s=0.5), what="staleness")
    [call] = call_rows(db)
    after = answer_row(cid)
    assert (after.status, after.call_id, call["status"]) == ("interrupted", call["id"],
                                                            "interrupted")
    assert after.text.startswith(beat.text) and after.text.startswith("Echo")
    # Continued: the request carries the question once, with the partial answer.
    ask(openai_server, "Go on", convs.get(ME, cid))
    sent = openai_server.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Tell me a long story"), ("assistant", after.text), ("user", "Go on")]


def test_a_process_killed_mid_compare_leaves_a_turn_that_can_be_voted_on(
        db, openai_server, streaming_server):
    user = "local"  # the compare page's, without sign-in
    proc, cid = child("compare", user, openai_server, streaming_server)
    try:
        wait_until(lambda: [(a.status, bool(a.text)) for t in compare.load(user, cid).turns
                            for a in t.answers] == [("ok", True), ("running", True)],
                   what="pane A done and pane B's text so far")
    finally:
        killed(proc)
    with pytest.raises(compare.CompareError, match="still_running"):
        compare.vote(user, cid, 0, "win", 0)
    wait_until(lambda: metering.mark_interrupted(db, stale_after_s=0.5), what="staleness")
    a, b = compare.load(user, cid).turns[0].answers
    b_row = next(r for r in call_rows(db) if r["status"] == "interrupted")
    assert (b.status, b.call_id) == ("interrupted", b_row["id"]) and b.text.startswith("Echo")
    assert a.status == "ok" and a.call_id is not None
    # The compare page, reopened after the restart, shows it and offers the vote.
    at = compare_page(app().run())
    at.session_state["cmp_id"] = cid
    at.run()
    assert not at.exception, at.exception
    assert "Interrupted: the app stopped" in at.warning[0].value
    assert "Echo: Tell me" in screen_text(at)
    at.button(key=f"cmp_vote_{cid}_0_win_0").click().run()
    assert compare.load(user, cid).turns[0].vote["winner"] == 0  # voted on, at last
