"""The entry and both pages driven by AppTest, with nothing configured and with a fake server."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import config
from tests.conftest import API_KEY, call_rows
from tests.timing import WAIT_S

ENTRY = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def app(lang: str = "en") -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = lang
    return at


def screen_text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success",
                                  "title", "subheader", "toast")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def fake_openai(monkeypatch, openai_server):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return openai_server


def chat(at: AppTest, model: str, text: str) -> AppTest:
    at.sidebar.selectbox(key="chat_model_OpenAI-compatible").set_value(model).run()
    at.chat_input[0].set_value(text).run()
    return at


def test_with_nothing_configured_the_app_opens_and_explains(db):
    at = app().run()
    assert not at.exception
    assert "No model is connected yet" in at.info[0].value
    assert at.chat_input[0].disabled


def test_the_explanation_speaks_chinese(db):
    at = app("zh").run()
    assert not at.exception
    assert "还没有连接任何模型" in at.info[0].value


def test_a_message_streams_and_is_logged(db, fake_openai):
    at = app().run()
    assert "Choose a model" in at.info[0].value
    chat(at, "gpt-4o-mini", "Hello AppTest")
    assert not at.exception
    user, assistant = at.chat_message
    assert user.text[0].value == "Hello AppTest"
    assert assistant.markdown[0].value.startswith("Echo: Hello AppTest")
    assert "gpt-4o-mini" in assistant.caption[0].value and "$0.0000" in assistant.caption[0].value
    [row] = call_rows(db)
    assert (row["status"], row["source"], row["model"]) == ("ok", "chat", "gpt-4o-mini")


def test_the_last_model_used_is_chosen_again(db, fake_openai):
    chat(app().run(), "gpt-4o", "remember me")
    again = app().run()
    assert again.sidebar.selectbox(key="chat_model_OpenAI-compatible").value == "gpt-4o"
    assert not again.info  # nothing to choose: ready to chat


@pytest.mark.parametrize("empty", ["", "   ", "\n\t", "\x00\x01"])
def test_an_empty_message_is_not_sent(db, fake_openai, empty):
    at = chat(app().run(), "gpt-4o-mini", empty)
    assert not at.exception and not at.chat_message
    assert call_rows(db) == []


def test_odd_characters_go_through(db, fake_openai):
    text = "emoji 🤖🎉, 中文测试, עברית مرحبا, tab\tand bell\x07 end"
    at = chat(app().run(), "gpt-4o-mini", text)
    sent = text.replace("\x07", "")
    assert at.chat_message[1].markdown[0].value.startswith(f"Echo: {sent}")


def test_a_wrong_key_shows_what_to_do_and_never_the_key(db, monkeypatch, openai_server):
    wrong = "sk-wrong-key-9876543210"
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    at = app().run()  # listing the models already fails
    assert "The API key was refused" in at.sidebar.error[0].value
    assert wrong not in screen_text(at) + at.sidebar.error[0].value

    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    at = app()
    at.secrets["endpoints"] = [{"name": "Fixed", "base_url": openai_server.url,
                                "api_key": wrong, "models": ["gpt-4o-mini"]}]
    at.run()
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("gpt-4o-mini").run()
    at.chat_input[0].set_value("hi").run()
    assert not at.exception
    assert "The API key was refused" in at.error[0].value
    assert wrong not in screen_text(at)
    assert at.chat_message[0].text[0].value == "hi"  # the user's message stays
    [row] = call_rows(db)
    assert (row["status"], row["error_kind"]) == ("error", "auth")


def test_unknown_model_and_server_death_keep_the_conversation(db, openai_server):
    at = app()
    # A fixed model list, as for a server that does not list what it serves.
    at.secrets["endpoints"] = [{"name": "Fixed", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["no-such-model",
                                                               "fault-disconnect"]}]
    at.run()
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("no-such-model").run()
    at.chat_input[0].set_value("first").run()
    assert "does not exist on this server" in at.error[0].value
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("fault-disconnect").run()
    at.chat_input[0].set_value("second").run()
    replies = [m for m in at.chat_message if m.name == "assistant"]
    assert replies[-1].markdown[0].value.startswith("Echo: second")  # the partial answer
    assert "broke off in the middle of the answer" in at.error[-1].value
    assert [m.text[0].value for m in at.chat_message if m.name == "user"] == [
        "first", "second"]
    assert [r["status"] for r in call_rows(db)] == ["error", "error"]


def test_settings_lists_endpoints_masks_keys_and_tests_them(db, fake_openai):
    at = app().run()
    at.switch_page("app_pages/settings.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert API_KEY not in table.to_string() and "sk-…cdef" in table.to_string()
    at.button(key="test_OpenAI-compatible").click().run()
    assert "models found" in at.success[0].value


def test_settings_adds_a_session_endpoint_and_refuses_a_bad_url(db, openai_server):
    at = app().run()
    at.switch_page("app_pages/settings.py").run()
    form = at.text_input
    form[1].set_value("not a url")
    at.form_submit_button[-1].click().run()
    assert "is not a URL" in at.warning[0].value
    at.text_input[0].set_value("Local fake")
    at.text_input[1].set_value(openai_server.url)
    at.text_input[2].set_value(API_KEY)
    at.form_submit_button[-1].click().run()
    assert "Added “Local fake”" in at.success[0].value
    at.switch_page("app_pages/chat.py").run()
    assert at.sidebar.selectbox(key="chat_endpoint").value == "Local fake"
    assert API_KEY not in screen_text(at)


def test_a_single_model_is_chosen_without_asking(db, openai_server):
    at = app()
    at.secrets["endpoints"] = [{"name": "Solo", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    assert at.sidebar.selectbox(key="chat_model_Solo").value == "gpt-4o-mini"
    at.chat_input[0].set_value("straight away").run()
    assert at.chat_message[1].markdown[0].value.startswith("Echo: straight away")


def test_a_server_that_is_down_says_so(db):
    at = app()
    at.secrets["endpoints"] = [{"name": "Down", "base_url": "http://127.0.0.1:9/v1",
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    at.chat_input[0].set_value("anyone there?").run()
    assert not at.exception
    assert "Cannot reach http://127.0.0.1:9/v1" in at.error[0].value
    [row] = call_rows(db)
    assert (row["status"], row["error_kind"]) == ("error", "connection")


def test_settings_pulls_an_ollama_model_with_progress(db, monkeypatch, ollama_server):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    at = app().run()
    at.switch_page("app_pages/settings.py").run()
    at.text_input(key="pull_name_Ollama").set_value("gemma3:1b")
    at.form_submit_button(key="pull_Ollama").click().run()
    assert not at.exception
    assert "gemma3:1b" in at.get("progress")[0].proto.text
    at.switch_page("app_pages/chat.py").run()
    assert "gemma3:1b" in at.sidebar.selectbox(key="chat_model_Ollama").options


def test_an_endpoint_that_is_down_does_not_hide_the_only_model(db, monkeypatch, openai_server):
    """OLLAMA_HOST set while Ollama is down, and one real model elsewhere: it is chosen."""
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    at = app()
    at.secrets["endpoints"] = [{"name": "Solo", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="chat_endpoint").value == "Solo"
    assert at.sidebar.selectbox(key="chat_model_Solo").value == "gpt-4o-mini"
    assert not at.chat_input[0].disabled


def test_the_endpoint_default_model_is_chosen_first(db, openai_server):
    at = app()
    at.secrets["endpoints"] = [{"name": "Many", "base_url": openai_server.url,
                                "api_key": API_KEY, "default_model": "gpt-4o"}]
    at.run()
    picker = at.sidebar.selectbox(key="chat_model_Many")
    assert picker.value == "gpt-4o"
    assert "text-embedding-3-small" not in picker.options and "dall-e-3" not in picker.options
    assert not at.chat_input[0].disabled


def test_the_app_starts_under_a_socks_proxy_and_reaches_a_local_ollama(
    db, monkeypatch, ollama_server
):
    """Clash's ALL_PROXY=socks5://127.0.0.1:7890, here with nothing listening on it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"socks5://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("ALL_PROXY", dead)
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    at = app().run()
    assert not at.exception and not at.error
    assert "llama3.2:1b" in at.sidebar.selectbox(key="chat_model_Ollama").options


def user_turns(request: dict) -> list[str]:
    """The roles of a request the fake received, in order."""
    return [m["role"] for m in request["messages"]]


def test_system_prompt_and_parameters_survive_a_page_switch(db, fake_openai):
    at = chat(app().run(), "gpt-4o-mini", "hello")  # the model is remembered once used
    at.sidebar.text_area(key="chat_system").set_value("Answer in French.")
    at.sidebar.toggle(key="chat_custom_params").set_value(True).run()
    at.sidebar.slider(key="chat_temperature").set_value(0.3)
    at.sidebar.number_input(key="chat_max_tokens").set_value(512)
    at.sidebar.number_input(key="chat_seed").set_value(7).run()
    at.switch_page("app_pages/settings.py").run()
    at.switch_page("app_pages/chat.py").run()
    assert at.sidebar.text_area(key="chat_system").value == "Answer in French."
    at.chat_input[0].set_value("Bonjour").run()
    sent = fake_openai.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert (sent["temperature"], sent.get("max_tokens"), sent["seed"]) == (0.3, 512, 7)


def test_a_failed_turn_is_not_sent_again_and_retry_replaces_it(db, openai_server):
    at = app()
    at.secrets["endpoints"] = [{"name": "Fixed", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["no-such-model", "gpt-4o-mini"]}]
    at.run()
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("no-such-model").run()
    at.chat_input[0].set_value("first").run()
    assert "does not exist on this server" in at.error[0].value
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("gpt-4o-mini").run()
    at.chat_input[0].set_value("second").run()
    # The failed "first" stays on screen but is not sent: never two user messages in a row.
    assert openai_server.requests[-1]["messages"] == [{"role": "user", "content": "second"}]

    at.sidebar.selectbox(key="chat_model_Fixed").set_value("no-such-model").run()
    at.chat_input[0].set_value("third").run()
    at.sidebar.selectbox(key="chat_model_Fixed").set_value("gpt-4o-mini").run()
    [retry] = [b for b in at.button if b.label == "Retry"]
    retry.click().run()
    assert not at.exception
    assert len(at.error) == 1  # the error of "first", still on screen; "third" went through
    sent = openai_server.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["second", "third"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    # The retried turn replaced the failed one: "third" is on screen once, answered.
    users = [m.text[0].value for m in at.chat_message if m.name == "user"]
    assert users == ["first", "second", "third"]
    assert at.chat_message[-1].markdown[0].value.startswith("Echo: third")


def test_user_messages_are_shown_as_typed(db, fake_openai):
    typed = "## not a heading\n*not italic* `not code` <b>not bold</b>"
    at = chat(app().run(), "gpt-4o-mini", typed)
    user = at.chat_message[0]
    assert [e.value for e in user.text] == [typed]
    assert not user.markdown


def test_an_answer_cut_by_max_tokens_says_so(db, fake_openai):
    at = app().run()
    at.sidebar.number_input(key="chat_max_tokens").set_value(5).run()
    chat(at, "gpt-4o-mini", "Tell me everything")
    reply = at.chat_message[1]
    assert any("max output tokens" in c.value for c in reply.caption)
    at = chat(app().run(), "gpt-4o", "short")  # a whole answer says nothing of the kind
    assert not any("max output tokens" in c.value for c in at.chat_message[1].caption)


def test_the_ready_note_goes_once_the_conversation_starts(db, fake_openai):
    at = app().run()
    at.sidebar.selectbox(key="chat_model_OpenAI-compatible").set_value("gpt-4o-mini").run()
    assert any(c.value.startswith("Ready: gpt-4o-mini") for c in at.caption)
    at.chat_input[0].set_value("hi").run()
    assert not any(c.value.startswith("Ready:") for c in at.caption)


@pytest.mark.parametrize("setting", ["1", "0"])
def test_ollama_auto_detection_can_be_turned_off(db, monkeypatch, setting):
    from core.ui import session
    from tests.fakes import FakeOllamaServer

    monkeypatch.setenv("OWNGPT_AUTODETECT_OLLAMA", setting)
    session._default_ollama.clear()
    try:
        server = FakeOllamaServer(port=11434).start()
    except OSError:  # something listens there already; it must answer as an Ollama does
        server = None
    try:
        if server is None and config.local_ollama() is None:
            pytest.skip("port 11434 is taken by something that is not an Ollama")
        at = app().run()
        offered = [o for box in at.sidebar.selectbox if box.key == "chat_endpoint"
                   for o in box.options]
        assert ("Ollama" in offered) == (setting == "1")
    finally:
        session._default_ollama.clear()
        if server is not None:
            server.stop()
