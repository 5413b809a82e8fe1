"""The chat turn without Streamlit: what a request carries, the answer saved from the worker,
two tabs at once, titles that never hold an answer up. Against the fake servers over HTTP."""

from __future__ import annotations

import threading

import pytest

from core import chat
from core import conversations as convs
from core.config import make_endpoint
from core.conversations import ChatMessage
from core.conversations_context import sendable
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.timing import WAIT_S, wait_until

ME = "ana@example.com"


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
