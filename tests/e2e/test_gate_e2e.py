"""The gate in a real browser: every address, opened straight in a fresh browser context, shows
a password box and nothing else; wrong and right passwords; remember-me across a reload;
what the admin and a visitor find in Settings; sign out."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from core import conversations as convs
from core.conversations import ChatMessage
from tests.conftest import API_KEY
from tests.e2e.conftest import RunningApp, screenshot
from tests.timing import wait_until

VISITOR_PASSWORD = "hunter2"
ADMIN_PASSWORD = "boss-Ω"
ADDRESSES = ["/", "/chat", "/compare", "/usage", "/settings", "/?c=abc"]


@pytest.fixture(scope="module")
def gated(start_app, e2e_openai, e2e_ollama) -> RunningApp:
    return start_app(APP_PASSWORD=VISITOR_PASSWORD, ADMIN_PASSWORD=ADMIN_PASSWORD,
                     OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY,
                     OLLAMA_HOST=e2e_ollama.url)


def password_box(page: Page):
    return page.get_by_role("textbox", name="Password", exact=True)


def sign_in(page: Page, password: str, *, remember: bool = True) -> None:
    password_box(page).fill(password)
    label = "Keep me signed in on this browser"
    if page.get_by_role("checkbox", name=label).is_checked() != remember:
        page.get_by_text(label).click()
    page.get_by_role("button", name="Sign in", exact=True).click()


def shows_only_the_password_box(page: Page, app_urls: list[str]) -> None:
    expect(password_box(page)).to_be_visible()
    expect(page.get_by_role("heading", name="OwnGPT is private")).to_be_visible()
    for test_id in ("stChatInput", "stDataFrame", "stTable", "stExpander", "stSidebarNav",
                    "stMetric", "stTabs", "stChatMessage"):
        expect(page.get_by_test_id(test_id)).to_have_count(0)
    html = page.content()
    for secret in [*app_urls, API_KEY, "OpenAI-compatible", "Ollama"]:
        assert secret not in html


@pytest.mark.parametrize("path", ADDRESSES)
def test_each_address_in_a_fresh_browser_shows_only_the_password_box(
        gated, browser, e2e_openai, e2e_ollama, path):
    page = gated.open(browser, path)
    shows_only_the_password_box(page, [e2e_openai.url, e2e_ollama.url])
    page.context.close()


def test_wrong_is_refused_right_admits_to_the_address_asked_for(gated, browser, e2e_openai,
                                                                e2e_ollama):
    page = gated.open(browser, "/compare")
    sign_in(page, "not-the-password")
    expect(page.get_by_text("That password is not right.")).to_be_visible()
    shows_only_the_password_box(page, [e2e_openai.url, e2e_ollama.url])
    screenshot(page, "gate.png")  # the README's picture of the password box
    sign_in(page, VISITOR_PASSWORD)
    expect(page.get_by_role("heading", name="Compare models")).to_be_visible()
    expect(page).to_have_url(gated.url + "/compare")
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_have_count(0)
    expect(password_box(page)).to_have_count(0)
    page.context.close()


def test_an_open_conversation_address_survives_sign_in(gated, browser):
    saved = convs.create("local", title="Behind the gate", eng=gated.db,
                         messages=[ChatMessage("user", "a question kept behind the gate")])
    page = gated.open(browser, f"/?c={saved.id}")
    expect(page.get_by_text("a question kept behind the gate")).to_have_count(0)
    sign_in(page, VISITOR_PASSWORD, remember=False)
    expect(page.get_by_text("a question kept behind the gate")).to_be_visible()
    expect(page).to_have_url(f"{gated.url}/?c={saved.id}")
    page.context.close()


def test_remember_me_survives_a_reload_and_sign_out_ends_it(gated, browser):
    page = gated.open(browser, "/")
    sign_in(page, VISITOR_PASSWORD)
    expect(page.get_by_test_id("stChatInput")).to_be_visible()

    def cookie():
        return next((c for c in page.context.cookies() if c["name"] == "owngpt_pass"), None)

    found = wait_until(cookie, what="the remember-me cookie")
    assert found["httpOnly"] and found["sameSite"] == "Strict"
    page.reload()
    expect(page.get_by_test_id("stChatInput")).to_be_visible()
    expect(password_box(page)).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()
    expect(password_box(page)).to_be_visible()
    wait_until(lambda: cookie() is None, what="sign out to drop the cookie")
    page.reload()
    expect(password_box(page)).to_be_visible()
    expect(page.get_by_test_id("stChatInput")).to_have_count(0)
    page.context.close()


def test_without_remember_me_a_reload_asks_again(gated, browser):
    page = gated.open(browser, "/")
    sign_in(page, VISITOR_PASSWORD, remember=False)
    expect(page.get_by_test_id("stChatInput")).to_be_visible()
    page.reload()
    expect(password_box(page)).to_be_visible()
    page.context.close()


def test_the_admin_opens_settings_tools(gated, browser, e2e_ollama):
    page = gated.open(browser, "/settings")
    sign_in(page, ADMIN_PASSWORD, remember=False)
    expect(page.get_by_text("Signed in as the admin")).to_be_visible()
    page.get_by_text(f"Ollama · {e2e_ollama.url}").click()
    page.get_by_role("button", name="Test connection").last.click()
    expect(page.get_by_text("models found")).to_be_visible()
    expect(page.get_by_role("button", name="Add and test")).to_be_visible()
    page.context.close()


def test_a_visitor_finds_no_tools_and_no_addresses_in_settings(gated, browser, e2e_openai,
                                                              e2e_ollama):
    page = gated.open(browser, "/settings")
    sign_in(page, VISITOR_PASSWORD, remember=False)
    expect(page.get_by_text("for the admin of this deployment")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    for name in ("Test connection", "Add and test", "Pull"):
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    html = page.content()
    assert e2e_openai.url not in html and e2e_ollama.url not in html and API_KEY not in html
    expect(page.get_by_role("button", name="Sign in as admin")).to_be_visible()
    page.context.close()

