"""The gate in AppTest: with APP_PASSWORD every page shows only the password box; what a
visitor and the admin may do in Settings and Usage, also when session state is forged."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.access import ADMIN, VISITOR, Passes
from core.config import make_endpoint
from tests.conftest import API_KEY, call_rows
from tests.timing import WAIT_S

ENTRY = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
PAGES = ["app_pages/chat.py", "app_pages/compare.py", "app_pages/usage.py",
         "app_pages/settings.py"]
VISITOR_PASSWORD = "hunter2"
ADMIN_PASSWORD = "boss-Ω"


@pytest.fixture
def gated(monkeypatch, db, openai_server, ollama_server):
    """A gated deployment with an OpenAI-protocol server and an Ollama configured."""
    monkeypatch.setenv("APP_PASSWORD", f"{VISITOR_PASSWORD}, other")
    monkeypatch.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)


def app(page: str | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    for k, v in query.items():
        at.query_params[k] = v
    if page:
        at.switch_page(page)
    return at.run()


def only_the_password_box(at: AppTest) -> None:
    assert not at.exception
    assert [e.value for e in at.title] == ["OwnGPT is private"]
    assert [w.label for w in at.text_input] == ["Password"]
    assert not at.chat_input and not at.dataframe and not at.expander and not at.tabs
    assert [w.key for w in at.selectbox] == ["language"]
    assert [b.key for b in at.button] == ["FormSubmitter:gate_form-Sign in"]
    assert not at.info and not at.subheader and not at.metric and not at.chat_message


def sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key="gate_password").set_value(password)
    at.button(key="FormSubmitter:gate_form-Sign in").click()
    return at.run()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success",
                                  "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", [None, *PAGES])
def test_every_page_shows_only_the_password_box(gated, page):
    only_the_password_box(app(page))


def test_an_open_conversation_address_shows_only_the_password_box(gated):
    only_the_password_box(app(c="abc"))


def test_a_list_of_passwords_in_the_secrets_gates_too(db, monkeypatch):
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.secrets["APP_PASSWORD"] = ["first, with a comma", "second"]
    at.run()
    only_the_password_box(at)
    sign_in(at, "first, with a comma")
    assert at.chat_input and not at.exception


@pytest.mark.parametrize("wrong", ["hunter3", "x" * 10_240, ADMIN_PASSWORD[:-1]])
def test_a_wrong_password_is_refused_with_a_sentence(gated, wrong):
    at = sign_in(app(), wrong)
    only_the_password_box_but_for_the_error(at)
    assert "That password is not right." in at.error[0].value


def only_the_password_box_but_for_the_error(at: AppTest) -> None:
    assert not at.chat_input and not at.dataframe
    assert [w.label for w in at.text_input] == ["Password"]


def test_an_empty_password_is_not_even_tried(gated):
    at = sign_in(app(), "   ")
    only_the_password_box_but_for_the_error(at)
    assert "Type the password first." in at.warning[0].value


def test_wrong_tries_are_slowed_and_say_how_long_to_wait(gated):
    at = app()
    for i in range(5):
        sign_in(at, f"wrong{i}")
    assert "Wait 1 s before the next try." in at.error[0].value
    sign_in(at, VISITOR_PASSWORD)  # too soon: refused without being checked
    assert "Too many wrong tries" in at.error[0].value
    assert not at.chat_input


def test_the_right_password_admits_a_visitor_and_sign_out_returns_to_the_box(gated):
    at = sign_in(app(), VISITOR_PASSWORD)
    assert not at.exception and at.chat_input
    assert "Signed in" in [c.value for c in at.sidebar.caption]
    at.button(key="gate_sign_out").click().run()
    only_the_password_box(at)


def test_a_visitor_sees_names_not_urls_or_keys_and_no_tools(gated, openai_server,
                                                            ollama_server):
    at = sign_in(app(), VISITOR_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["Name", "Type", "From"]
    shown = table.to_string() + texts(at)
    assert openai_server.url not in shown and ollama_server.url not in shown
    assert "sk-" not in shown
    assert not [b for b in at.button if b.key.startswith(("test_", "remove_"))]
    assert not at.expander
    assert [b.label for b in at.button] == ["Sign in as admin", "Sign out"]
    assert "for the admin of this deployment" in at.info[0].value


def test_a_visitor_cannot_add_pull_or_test_by_forging_session_state(gated, openai_server,
                                                                     ollama_server):
    at = sign_in(app(), VISITOR_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    calls = (len(openai_server.calls), len(ollama_server.calls))
    # A connection planted in the session, pointing where the visitor likes: not used.
    at.session_state["session_endpoints"] = [
        make_endpoint("Planted", "ollama", base_url=ollama_server.url)]
    # A role written into the session: it is not a signed pass, so it grants nothing.
    at.session_state["gate_pass"] = "admin"
    at.run()
    only_the_password_box(at)  # an unsigned pass is no pass at all
    sign_in(at, VISITOR_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    assert "Planted" not in at.dataframe[0].value.to_string()
    assert not [b for b in at.button if b.key.startswith(("test_", "pull_"))]
    assert not [w for w in at.text_input if w.key and w.key.startswith("pull_name_")]
    # A pass signed with a guessed secret is no better.
    at.session_state["gate_pass"] = Passes("guessed").issue(ADMIN, ADMIN_PASSWORD, "session")
    at.run()
    only_the_password_box(at)
    assert (len(openai_server.calls), len(ollama_server.calls)) == calls


def test_a_stale_admin_button_does_nothing_once_the_session_is_a_visitor(gated, openai_server):
    at = sign_in(app(), ADMIN_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    test = at.button(key="test_OpenAI-compatible")
    # The pass changes under the page (a password changed, or state swapped) before the click.
    secret = st.get_option("server.cookieSecret")
    at.session_state["gate_pass"] = Passes(secret).issue(VISITOR, VISITOR_PASSWORD, "session")
    before = len(openai_server.calls)
    test.click().run()
    assert not at.exception and not at.success
    assert len(openai_server.calls) == before


def refusing_page() -> None:
    import streamlit as st

    from core import ui

    ui.require("pull_model")
    st.write("pulled")


def test_require_refuses_a_visitor_where_the_action_happens(gated):
    at = AppTest.from_function(refusing_page, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.run()
    assert "Only the admin" in at.error[0].value
    assert "pulled" not in [m.value for m in at.markdown]
    secret = st.get_option("server.cookieSecret")
    at.session_state["gate_pass"] = Passes(secret).issue(VISITOR, VISITOR_PASSWORD, "session")
    at.run()
    assert "pulled" not in [m.value for m in at.markdown]
    at.session_state["gate_pass"] = Passes(secret).issue(ADMIN, ADMIN_PASSWORD, "session")
    at.run()
    assert not at.error and "pulled" in [m.value for m in at.markdown]


def test_the_admin_tests_pulls_and_adds(gated, openai_server, ollama_server):
    at = sign_in(app(), ADMIN_PASSWORD)
    assert "Signed in as the admin" in [c.value for c in at.sidebar.caption]
    at.switch_page("app_pages/settings.py").run()
    table = at.dataframe[0].value.to_string()
    assert openai_server.url in table and API_KEY not in table
    at.button(key="test_OpenAI-compatible").click().run()
    assert "models found" in at.success[0].value
    at.text_input(key="pull_name_Ollama").set_value("gemma3:1b")
    at.button(key="pull_Ollama").click().run()
    assert ("POST", "/api/pull") in ollama_server.calls
    add = [w for w in at.text_input if w.label in ("Name", "Base URL", "API key")]
    add[0].set_value("Mine")
    add[1].set_value(openai_server.url)
    add[2].set_value(API_KEY)
    at.button(key="FormSubmitter:add_endpoint-Add and test").click().run()
    assert not at.exception
    assert "Added “Mine”" in at.success[0].value


def test_a_visitor_becomes_the_admin_in_settings_with_the_admin_password(gated):
    at = sign_in(app(), VISITOR_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    box = "FormSubmitter:gate_admin_form-Sign in as admin"
    at.text_input(key="gate_admin_password").set_value(VISITOR_PASSWORD)  # not the admin's
    at.button(key=box).click().run()
    assert "That password is not right." in at.error[0].value
    assert not [b for b in at.button if b.key.startswith("test_")]
    at.text_input(key="gate_admin_password").set_value(ADMIN_PASSWORD)
    at.button(key=box).click().run()
    assert not at.exception
    assert at.button(key="test_OpenAI-compatible")


def test_without_admin_password_nobody_is_the_admin(db, monkeypatch, openai_server):
    monkeypatch.setenv("APP_PASSWORD", VISITOR_PASSWORD)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    at = sign_in(app(), VISITOR_PASSWORD)
    at.switch_page("app_pages/settings.py").run()
    assert "has no admin sign-in" in at.info[0].value
    assert not at.text_input and not [b for b in at.button if b.key.startswith("test_")]


def test_a_visitor_sees_usage_but_cannot_edit_prices_or_the_budget(gated):
    at = sign_in(app(), VISITOR_PASSWORD)
    at.sidebar.selectbox(key="chat_model_OpenAI-compatible").set_value("gpt-4o-mini").run()
    at.chat_input[0].set_value("hello").run()
    assert call_rows_count(at) == 1
    at.switch_page("app_pages/usage.py").run()
    assert not at.exception
    assert at.metric  # their usage, shown
    assert "set by the admin" in texts(at)
    assert not [b for b in at.button if b.key == "usage_prices_save"]
    save = next(b for b in at.button if b.key == "usage_budget_save")
    assert save.disabled


def call_rows_count(at: AppTest) -> int:
    from core import store
    return len(call_rows(store.engine(store.database_url())))


def test_a_visitor_is_not_told_the_servers_address_in_an_error(db, monkeypatch):
    monkeypatch.setenv("APP_PASSWORD", VISITOR_PASSWORD)
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.secrets["endpoints"] = [{"name": "Down", "base_url": "http://127.0.0.1:9/v1",
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    sign_in(at, VISITOR_PASSWORD)
    at.chat_input[0].set_value("anyone there?").run()
    assert "Cannot reach the server" in at.error[0].value
    assert "127.0.0.1:9" not in texts(at)


def test_an_open_deployment_has_no_box_and_no_sign_out(db, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    at = app("app_pages/settings.py")
    assert not at.exception
    assert at.button(key="test_OpenAI-compatible")
    assert not [b for b in at.button if b.key == "gate_sign_out"]
    assert openai_server.url in at.dataframe[0].value.to_string()


def test_with_auth_configured_settings_asks_who_you_are_like_every_page(db, monkeypatch,
                                                                        openai_server):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback",
                          "cookie_secret": "x", "client_id": "", "client_secret": "",
                          "server_metadata_url": ""}
    at.switch_page("app_pages/settings.py")
    at.run()
    assert "Sign-in could not be checked" in texts(at)
    assert not at.dataframe and not [b for b in at.button if b.key.startswith("test_")]


@pytest.mark.parametrize("page, title", [("app_pages/settings.py", "Settings"),
                                         ("app_pages/compare.py", "Compare models")])
def test_signing_in_opens_the_page_asked_for(gated, page, title):
    at = sign_in(app(page), ADMIN_PASSWORD)
    assert not at.exception
    assert title in [e.value for e in at.title]
