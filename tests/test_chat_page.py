"""The chat page on saved conversations, driven by AppTest against the fake servers."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core import chat as flow
from core import conversations as convs
from core import conversations_context as ctx
from core import conversations_list as listing
from core import conversations_transfer as transfer
from core import store
from core.config import make_endpoint
from core.providers import Message
from core.ui import chat as chat_ui
from core.ui.conversations import import_file
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.test_app import ENTRY, screen_text
from tests.timing import WAIT_S, wait_until

MODEL_BOX = "chat_model_OpenAI-compatible"


@pytest.fixture
def fake_openai(monkeypatch, openai_server):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return openai_server


def app(lang: str = "en", c: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = lang
    if c is not None:
        at.query_params["c"] = c
    return at


def send(at: AppTest, text: str, model: str | None = "gpt-4o-mini") -> AppTest:
    if model is not None and at.sidebar.selectbox(key=MODEL_BOX).value != model:
        at.sidebar.selectbox(key=MODEL_BOX).set_value(model).run()
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def address(at: AppTest) -> str:
    return at.query_params["c"][0] if isinstance(at.query_params["c"], list) \
        else at.query_params["c"]


def on_screen(at: AppTest) -> list[tuple[str, str]]:
    out = []
    for m in at.chat_message:
        body = m.text[0].value if m.name == "user" and m.text else (
            m.markdown[0].value if m.markdown else "")
        out.append((m.name, body))
    return out


def test_a_conversation_is_saved_and_its_address_reopens_it_with_its_settings(
        db, fake_openai):
    at = app().run()
    at.sidebar.text_area(key="chat_system").set_value("Answer in French.").run()
    send(at, "Hello saved world")
    cid = address(at)
    [row] = call_rows(db)
    assert row["conversation_id"] == cid  # the call log knows the conversation
    # A reload (a new session) on the address: the conversation and its settings are back.
    again = app(c=cid).run()
    assert not again.exception
    assert [r for r, _ in on_screen(again)] == ["user", "assistant"]
    assert on_screen(again)[0][1] == "Hello saved world"
    assert on_screen(again)[1][1].startswith("Echo: Hello saved world")
    assert again.sidebar.text_area(key="chat_system").value == "Answer in French."
    assert again.sidebar.selectbox(key=MODEL_BOX).value == "gpt-4o-mini"
    # Listed under Today, with the first message as its title, and its running total.
    captions = [c.value for c in again.sidebar.caption]
    assert "Today" in captions
    assert any(c.startswith("This conversation: 1 calls") for c in captions)
    assert again.button(key=f"convo_open_{cid}").label == "Hello saved world"


def test_an_unknown_or_foreign_address_says_so_and_opens_a_new_chat(db, fake_openai):
    theirs = convs.create("someone-else@example.com", title="Not yours",
                          messages=[convs.ChatMessage("user", "secret")])
    for cid in ("no-such-id", theirs.id):
        at = app(c=cid).run()
        assert not at.exception
        assert "does not exist, or it is not yours" in at.warning[0].value
        assert not at.chat_message and "secret" not in screen_text(at)
        assert "c" not in at.query_params
        send(at, "fresh start")
        assert address(at) != theirs.id


def test_the_request_carries_the_branch_on_screen_and_arrows_flip_it(db, fake_openai):
    at = send(app().run(), "one")
    send(at, "two")
    at.button(key=[b.key for b in at.button if b.key.startswith("chat_regen_")][-1]).click()
    at.run()
    assert not at.exception
    # The regenerated answer is a sibling: ‹ 2/2 ›, and the request repeated "two" after "one".
    sent = fake_openai.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["one", "two"]
    assert any(md.value == "2/2" for md in at.markdown)
    prev = [b for b in at.button if b.key.startswith("chat_prev_")]
    assert prev and not prev[-1].disabled
    prev[-1].click().run()
    assert any(md.value == "1/2" for md in at.markdown)
    # Edit "one" and resend: a new branch from the root, where "two" is not.
    [edit_key] = [b.key for b in at.button if b.key.startswith("chat_edit_")][:1]
    mid = edit_key.removeprefix("chat_edit_")
    at.text_area(key=f"chat_edit_text_{mid}").set_value("uno")
    at.button(key=edit_key).click().run()
    assert not at.exception
    sent = fake_openai.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["uno"]
    assert [t for _, t in on_screen(at)][0] == "uno"
    assert any(md.value == "2/2" for md in at.chat_message[0].markdown)
    # Saved as a tree: 2 questions at the root, the first with its answer and "two" below.
    cid = address(at)
    assert len(convs.path("local", cid)) == 2


def test_an_error_is_data_rendered_in_the_readers_language(db, openai_server):
    at = app()
    at.secrets["endpoints"] = [{"name": "Fixed", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["no-such-model"]}]
    at.run()
    at.chat_input[0].set_value("first").run()
    assert "does not exist on this server" in at.error[0].value
    cid = address(at)
    [saved] = [m for m in convs.path("local", cid) if m.role == "assistant"]
    assert (saved.status, saved.error_kind) == ("error", "model_not_found")
    zh = app("zh", c=cid)
    zh.secrets["endpoints"] = at.secrets["endpoints"]
    zh.run()
    assert "该服务器上没有模型“no-such-model”" in zh.error[0].value


def test_reasoning_is_shown_but_never_sent_back(db, fake_openai):
    at = send(app().run(), "think first", model="fault-reasoning")
    assert at.chat_message[1].expander  # the reasoning, folded
    send(at, "again", model="gpt-4o-mini")
    sent = fake_openai.requests[-1]["messages"]
    assert all("Let me think" not in m["content"] for m in sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


def test_a_long_conversation_is_trimmed_to_the_window_and_the_user_is_told(
        db, openai_server, monkeypatch):
    monkeypatch.setattr("core.chat.context_window", lambda endpoint, model: 700)
    at = app()
    at.secrets["endpoints"] = [{"name": "Small", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    for i in range(4):
        at.chat_input[0].set_value(f"turn {i} " + "word " * 150).run()
    sent = openai_server.requests[-1]["messages"]
    assert sent[-1]["content"].startswith("turn 3")
    assert not any(m["content"].startswith("turn 0") for m in sent)  # the oldest went first
    assert any("were left out" in c.value for c in at.sidebar.caption)
    assert at.sidebar.get("progress")  # the gauge


def test_ollama_gets_num_ctx_and_the_window_it_names(db, monkeypatch, ollama_server):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    at = app().run()
    at.sidebar.selectbox(key="chat_model_Ollama").set_value("llama3.2:1b").run()
    at.chat_input[0].set_value("hello ollama").run()
    assert not at.exception
    options = ollama_server.requests[-1]["options"]
    assert 0 < options["num_ctx"] <= ctx.OLLAMA_MAX_CTX


def test_the_same_conversation_in_two_tabs_is_never_overwritten(db, fake_openai):
    first = send(app().run(), "from tab one")
    cid = address(first)
    second = app(c=cid).run()  # the second tab draws the conversation as it is now
    send(first, "tab one again", model=None)  # the conversation moves on in tab one
    before = len(convs.path("local", cid))
    second.chat_input[0].set_value("from tab two").run()
    assert not second.exception
    assert "changed in another tab" in second.warning[0].value
    assert len(convs.path("local", cid)) == before  # nothing written, nothing duplicated
    second.chat_input[0].set_value("from tab two").run()  # now it has seen the change
    texts = [m.text for m in convs.path("local", cid) if m.role == "user"]
    assert texts == ["from tab one", "tab one again", "from tab two"]


def test_deleting_the_open_conversation_asks_first_then_opens_a_new_chat(db, fake_openai):
    at = send(app().run(), "delete me")
    cid = address(at)
    at.button(key="convo_delete").click().run()
    assert "for good" in at.warning[0].value
    assert listing.count_conversations("local") == 1  # only asked
    at.button(key="convo_delete_yes").click().run()
    assert not at.exception
    assert listing.count_conversations("local") == 0
    assert not at.chat_message and "c" not in at.query_params
    assert f"convo_open_{cid}" not in [b.key for b in at.button]


def test_rename_and_search_in_chinese(db, fake_openai):
    at = send(app().run(), "请帮我写一首关于秋天的诗")
    cid = address(at)
    send(at, "another", model=None)
    at.button(key="convo_new").click().run()
    send(at, "Something else entirely")
    at.sidebar.text_input(key="convo_search").set_value("秋天").run()
    listed = [b.key for b in at.sidebar.button if b.key.startswith("convo_open_")]
    assert listed == [f"convo_open_{cid}"]
    at.button(key=f"convo_open_{cid}").click().run()
    at.text_input(key=f"convo_title_{cid}").set_value("秋天的诗")
    at.button(key="convo_rename").click().run()
    assert convs.get("local", cid).title == "秋天的诗"
    assert on_screen(at)[0][1] == "请帮我写一首关于秋天的诗"


def test_a_1_mb_message_is_refused_with_a_sentence(db, fake_openai):
    at = send(app().run(), "x" * 1_000_000)
    assert "the limit is 500,000" in at.warning[0].value
    assert listing.count_conversations("local") == 0 and call_rows(db) == []


def test_a_long_conversation_shows_its_last_messages_and_earlier_on_demand(db, fake_openai):
    turns = []
    for i in range(60):
        turns += [convs.ChatMessage("user", f"q{i}"), convs.ChatMessage("assistant", f"a{i}")]
    cid = convs.create("local", messages=turns).id
    at = app(c=cid).run()
    assert len(at.chat_message) == chat_ui.SHOW_STEP
    at.button(key="chat_show_earlier").click().run()
    assert len(at.chat_message) == 2 * chat_ui.SHOW_STEP


@pytest.mark.parametrize(("data", "says"), [
    (b"not json at all", "is not JSON"),
    (json.dumps({"hello": "world"}).encode(), "not an OwnGPT conversation"),
    (b" " * (transfer.MAX_IMPORT_BYTES + 1), "at most 52 MB"),
])
def test_an_import_that_cannot_be_read_says_why(db, data, says):
    cid, problem = import_file("local", data)
    assert cid is None and says in problem
    assert listing.count_conversations("local") == 0


def test_an_export_imports_back_and_a_compare_pane_continues_in_chat(db, fake_openai):
    at = send(app().run(), "round trip")
    cid, problem = import_file("local", transfer.export_json("local", address(at)).encode())
    assert problem is None
    assert [m.text for m in convs.path("local", cid)][0] == "round trip"
    new_id, link = convs.continue_in_chat(
        "local", endpoint="OpenAI-compatible", model="gpt-4o",
        thread=[Message("user", "compare me"), Message("assistant", "compared")])
    assert link == f"/?c={new_id}"
    there = app(c=new_id).run()
    assert on_screen(there) == [("user", "compare me"), ("assistant", "compared")]
    assert there.sidebar.selectbox(key=MODEL_BOX).value == "gpt-4o"


def test_titles_come_from_the_first_message_or_when_asked_from_the_model(db, fake_openai):
    at = send(app().run(), "How do I bake sourdough bread at home with a cold kitchen?")
    title = convs.get("local", address(at)).title
    assert title.startswith("How do I bake sourdough") and len(title) <= 41
    assert [r["source"] for r in call_rows(db)] == ["chat"]  # off by default: no extra call
    at.button(key="convo_new").click().run()
    at.sidebar.toggle(key="chat_ask_titles").set_value(True).run()
    send(at, "Second conversation here", model=None)
    # The title is a run of its own, after the answer is saved: it comes a little later.
    rows = wait_until(lambda: (r := call_rows(db)) and r[-1]["status"] == "ok"
                      and r[-1]["source"] == "title" and r, what="the title's call")
    assert [r["source"] for r in rows] == ["chat", "chat", "title"]
    assert rows[-1]["conversation_id"] == address(at)  # metered with its conversation
    # The fake echoes the prompt, so the model's "title" starts with the instruction's words.
    wait_until(lambda: convs.get("local", address(at)).title.startswith("Echo"),
               what="the model's title")


def test_the_gauge_shows_how_full_the_context_is_on_opening(db, fake_openai):
    turns = [convs.ChatMessage("user", "q " * 400), convs.ChatMessage("assistant", "a " * 400)]
    cid = convs.create("local", endpoint="OpenAI-compatible", model="gpt-4o",
                       messages=turns).id
    at = app(c=cid).run()
    [gauge] = at.sidebar.get("progress")
    assert "of 128,000 tokens" in gauge.proto.text  # gpt-4o's window, before a send


def test_a_conversations_model_is_chosen_even_when_the_server_does_not_list_it(
        db, fake_openai):
    cid = convs.create("local", endpoint="OpenAI-compatible", model="my-deployment",
                       messages=[convs.ChatMessage("user", "hi")]).id
    at = app(c=cid).run()
    assert at.sidebar.selectbox(key=MODEL_BOX).value == "my-deployment"


def test_a_conversation_with_bad_stored_settings_opens_with_a_note(db, fake_openai):
    cid = convs.create("local", endpoint="OpenAI-compatible", model="gpt-4o-mini",
                       messages=[convs.ChatMessage("user", "hi"),
                                 convs.ChatMessage("assistant", "hello")]).id
    with db.begin() as conn:  # as an older version or a hand edit might have left it
        conn.exec_driver_sql("UPDATE conversations SET params = :p WHERE id = :cid",
                             {"p": '{"temperature": 5, "top_p": -1, "seed": 3}', "cid": cid})
    at = app(c=cid).run()
    assert not at.exception, at.exception
    assert "temperature=5; top_p=-1" in at.warning[0].value
    assert on_screen(at) == [("user", "hi"), ("assistant", "hello")]
    assert at.sidebar.number_input(key="chat_seed").value == 3  # the good value is kept
    send(at, "and now?", model=None)  # sending saves the settings as they are on screen
    assert convs.get("local", cid).notes == ()


@pytest.mark.parametrize(("doc", "says"), [
    ({"params": {"temperature": 5}}, "sets “params/temperature” to 5; it must be between 0 and 2"),
    ({"params": {"top_p": -1}}, "sets “params/top_p” to -1; it must be between 0 and 1"),
])
def test_an_import_with_parameters_out_of_range_says_which(db, doc, says):
    data = {"format": transfer.FORMAT, "version": 1, "messages": [], **doc}
    cid, problem = import_file("local", json.dumps(data).encode())
    assert cid is None and says in problem


@pytest.fixture
def slow_openai(monkeypatch):
    """The page's server: "fault-slow" waits ten minutes for its first token; the others
    stream 1,000 tokens at 50 a second (20 s)."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=1000, rate=50, slow_first_token=600) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        yield server


def started(server, model: str) -> flow.ChatTurn:
    """A message sent by another run of the page (the tab before its reload)."""
    endpoint = make_endpoint("OpenAI-compatible", "openai", base_url=server.url,
                             api_key=API_KEY, source="env")
    return flow.send("local", "Tell me a long story", flow.Settings(endpoint, model)).start()


def live_answer(at: AppTest) -> str:
    [_, answer] = at.chat_message
    return answer.markdown[-1].value


@pytest.mark.parametrize("model", ["fault-slow", "gpt-4o-mini"])
def test_a_reload_while_an_answer_streams_shows_it_and_its_stop(db, slow_openai, model):
    turn = started(slow_openai, model)
    try:
        if model == "gpt-4o-mini":  # mid-stream, else during the first token
            wait_until(lambda: len(turn.call.text) > 20, what="part of the answer")
        at = app(c=turn.cid).run()
        assert not at.exception, at.exception
        assert [m.name for m in at.chat_message] == ["user", "assistant"]
        if model == "fault-slow":
            assert live_answer(at) == ":gray[Waiting for the first token…]"
        else:
            assert live_answer(at).startswith("Echo: Tell me a long story")
            assert live_answer(at).endswith(" ▌")
        at.button(key=f"chat_watch_stop_{turn.answer.id}").click().run()
    finally:
        turn.stop()
    assert turn.wait(WAIT_S)
    at.run()
    assert "⏹ Stopped. The partial answer is kept." in [c.value for c in at.caption]
    assert convs.path("local", turn.cid)[-1].status == "stopped"


def test_an_answer_another_process_streams_is_drawn_from_its_heartbeat(db, fake_openai):
    cid = convs.create("local", messages=[
        convs.ChatMessage("user", "q"),
        convs.ChatMessage("assistant", "the text so far", status="running")]).id
    at = app(c=cid).run()
    assert live_answer(at) == "the text so far ▌"
    assert any("another run of the app" in c.value for c in at.caption)
    answer_id = convs.path("local", cid)[-1].id
    with db.begin() as conn:  # the other process saves it
        conn.execute(store.messages.update().where(store.messages.c.id == answer_id)
                     .values(text="the whole text", status="ok"))
    at.run()
    assert live_answer(at) == "the whole text"


def test_an_interrupted_answer_shows_its_text_and_retry_asks_again(db, fake_openai):
    cid = convs.create("local", endpoint="OpenAI-compatible", model="gpt-4o-mini", messages=[
        convs.ChatMessage("user", "q"),
        convs.ChatMessage("assistant", "half an ans", status="interrupted")]).id
    at = app(c=cid).run()
    assert live_answer(at) == "half an ans"
    assert "Interrupted: the app stopped" in at.warning[0].value
    [retry] = [b for b in at.button if b.key.startswith("chat_retry_")]
    retry.click().run()
    assert not at.exception, at.exception
    assert [m["content"] for m in fake_openai.requests[-1]["messages"]] == ["q"]
    assert on_screen(at)[-1][1].startswith("Echo: q") and any(
        md.value == "2/2" for md in at.markdown)
