"""The settings page in a real browser: connections listed, tested, added; nothing configured."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import API_KEY
from tests.e2e.conftest import screenshot


def test_nothing_configured_explains_how_to_connect(start_app, browser):
    page = start_app().open(browser)
    expect(page.get_by_text("No model is connected yet")).to_be_visible()
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_disabled()


def test_connections_are_listed_tested_and_added(start_app, e2e_openai, e2e_ollama, browser):
    app = start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY,
                    OLLAMA_HOST=e2e_ollama.url)
    page = app.open(browser, "/settings")
    expect(page.get_by_role("heading", name="Connections", exact=True)).to_be_visible()
    assert API_KEY not in page.content()

    page.get_by_text(f"Ollama · {e2e_ollama.url}").click()
    page.get_by_role("button", name="Test connection").last.click()
    expect(page.get_by_text("models found")).to_be_visible()
    page.get_by_role("heading", name="Settings", exact=True).scroll_into_view_if_needed()
    screenshot(page, "settings.png")

    form = page.get_by_test_id("stForm").last
    form.get_by_role("textbox", name="Base URL").fill("not a url")
    form.get_by_role("button", name="Add and test").click()
    expect(page.get_by_text("is not a URL")).to_be_visible()

    form.get_by_role("textbox", name="Name").fill("My vLLM")
    bare = e2e_openai.url.removesuffix("/v1")  # /v1 gets added
    form.get_by_role("textbox", name="Base URL").fill(bare)
    form.get_by_role("textbox", name="API key").fill(API_KEY)
    form.get_by_role("button", name="Add and test").click()
    expect(page.get_by_text("Added “My vLLM”")).to_be_visible()
    expect(page.get_by_text(f"My vLLM · {bare}/v1")).to_be_visible()  # listed, /v1 added
    assert API_KEY not in page.content()  # the form forgot the typed key
