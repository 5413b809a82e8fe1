"""The entry and both pages driven by AppTest, with nothing configured and with a fake server."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import API_KEY, call_rows

ENTRY = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def app(lang: str = "en") -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=30)
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
    assert user.markdown[0].value == "Hello AppTest"
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
    assert at.chat_message[0].markdown[0].value == "hi"  # the user's message stays
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
    assert [m.markdown[0].value for m in at.chat_message if m.name == "user"] == [
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
