"""Chat in a real browser: streaming, stop, errors and odd input, as a user sees them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from tests.conftest import API_KEY
from tests.e2e.conftest import choose_model, screenshot, send, settled
from tests.timing import WAIT_MS


@pytest.fixture(scope="module")
def app(start_app, e2e_openai):
    return start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)


def assistant(page):
    return page.get_by_test_id("stChatMessage").filter(
        has=page.get_by_test_id("stChatMessageAvatarAssistant")).last


def go_to(page, name: str, heading: str) -> None:
    """Open another page from the sidebar's navigation, as a user does."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    settled(page)


def test_a_message_streams_then_shows_its_numbers(app, browser):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "Hello from the browser")
    reply = assistant(page)
    expect(reply).to_contain_text("Echo: Hello from the browser")
    # Still streaming: the cursor is there and the last filler words are not yet.
    expect(reply).to_contain_text("▌")
    expect(reply).to_contain_text("tokens/s")
    expect(reply).not_to_contain_text("▌")
    expect(reply).to_contain_text("first token")
    screenshot(page, "chat.png")
    rows = app.wait_rows(1)
    assert rows[-1]["status"] == "ok" and rows[-1]["output_tokens"] == 40


def test_stop_keeps_the_message_and_the_partial_reply(app, browser):
    page = app.open(browser)
    choose_model(page, "fault-slow")  # the first token never comes within a test
    expect(page.get_by_text("Ready: fault-slow")).to_be_visible()  # the rerun has drawn
    before = len(app.wait_rows(0))
    send(page, "Please stop me")
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    # Our own Stop button (keyed owngpt_stop_<run>): its click is an ordinary rerun.
    page.locator("[class*='st-key-owngpt_stop_']").get_by_role("button").click()
    expect(page.get_by_text("Stopped. The partial answer is kept.")).to_be_visible()
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("Please stop me")
    # Ended well before the first token was due: only a dropped request ends it this soon.
    rows = app.wait_rows(before + 1)
    assert rows[-1]["status"] == "stopped"


def test_html_in_an_answer_is_shown_as_text_never_run(app, browser):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, 'Say <script>window.pwned=1</script><img src=x onerror="window.pwned=2"> ok')
    expect(assistant(page)).to_contain_text("tokens/s")
    assert page.evaluate("window.pwned") is None
    assert page.locator("[data-testid=stChatMessage] script").count() == 0
    assert page.locator("[data-testid=stChatMessage] img[src=x]").count() == 0


class _Leak(BaseHTTPRequestHandler):
    """Where an injected image would send the conversation: it counts every request."""

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def leak() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Leak)
    server.hits = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_images_in_an_answer_become_links_and_nothing_is_fetched(app, browser, leak):
    base = f"http://127.0.0.1:{leak.server_address[1]}"
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    # The fake echoes the message: the answer carries an inline image, a reference-style
    # image (its definition on a line of its own) and raw HTML with an onerror.
    send(page, f"Look ![chart]({base}/inline?q=secret) and ![][r] and "
               f'<img src="{base}/raw" onerror="window.pwned=1">\n\n[r]: {base}/ref\n\nend')
    reply = assistant(page)
    expect(reply).to_contain_text("tokens/s")
    for view in ("after streaming", "drawn again from the saved conversation"):
        messages = page.get_by_test_id("stChatMessage")
        assert messages.locator("img[src^='http']").count() == 0, view
        link = assistant(page).get_by_role("link", name="chart")
        expect(link).to_have_attribute("href", f"{base}/inline?q=secret")
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        expect(assistant(page).get_by_role("link", name="image")).to_have_attribute(
            "href", f"{base}/ref")
        expect(assistant(page)).to_contain_text(f'<img src="{base}/raw"')  # shown as text
        page.reload()
        expect(assistant(page)).to_contain_text("tokens/s")
        settled(page)
    assert page.evaluate("window.pwned") is None
    assert leak.hits == []  # type: ignore[attr-defined]


def test_empty_and_huge_messages(app, browser, e2e_openai):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    before = len(app.wait_rows(0))
    send(page, "   ")
    expect(page.get_by_text("The message is empty, so nothing was sent.")).to_be_visible()
    assert page.get_by_test_id("stChatMessage").count() == 0
    huge = "x" * 200_000
    e2e_openai.rate = 0  # the echo is 12,500 tokens: as fast as it goes
    try:
        send(page, huge)
        reply = assistant(page)
        # 200 KB up through the browser and 12,500 tokens back: three times the usual wait.
        expect(reply.get_by_text("tokens/s")).to_be_visible(timeout=3 * WAIT_MS)
    finally:
        e2e_openai.rate = 80
    rows = app.wait_rows(before + 1)
    assert len(rows) == before + 1 and rows[-1]["status"] == "ok"
    assert rows[-1]["input_tokens"] >= 50_000


def test_a_server_dying_mid_answer_keeps_the_partial_answer(app, browser):
    page = app.open(browser)
    choose_model(page, "fault-disconnect")
    send(page, "Tell me a long story")
    expect(page.get_by_text("broke off in the middle of the answer")).to_be_visible()
    expect(assistant(page)).to_contain_text("Echo: Tell me a long story")
    assert app.wait_rows(1)[-1]["status"] == "error"


def test_a_wrong_key_shows_the_sentence_and_never_the_key(start_app, e2e_openai, browser):
    wrong = "sk-wrong-e2e-key-1234567890"
    app = start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=wrong)
    page = app.open(browser)
    expect(page.get_by_text("The API key was refused").first).to_be_visible()
    choose_model(page, "gpt-4o-mini")  # typed: the server would not list its models
    send(page, "hello?")
    expect(page.get_by_role("main").get_by_text("The API key was refused")).to_be_visible()
    assert wrong not in page.content()
    assert app.wait_rows(1)[-1]["error_kind"] == "auth"


def test_chinese_browser_gets_chinese_and_pages_keep_their_addresses(app, browser):
    page = app.open(browser, "/settings", locale="zh-CN")
    expect(page.get_by_role("heading", name="设置")).to_be_visible()
    page = app.open(browser, "/chat", locale="zh-CN")
    expect(page.get_by_role("heading", name="对话")).to_be_visible()
    choose_model(page, "gpt-4o-mini")
    send(page, "你好，介绍一下你自己")
    expect(assistant(page)).to_contain_text("tokens/秒")
    screenshot(page, "chat-zh.png")


def test_what_the_user_set_survives_a_visit_to_settings(app, browser, e2e_openai):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    system = page.locator("[class*='st-key-chat_system'] textarea")
    system.fill("Answer like a pirate.")
    system.press("Control+Enter")
    page.get_by_test_id("stSidebar").get_by_text("Parameters").click()
    limit = page.locator("[class*='st-key-chat_max_tokens'] input")
    limit.fill("6")
    limit.press("Enter")
    settled(page)
    send(page, "first")
    expect(assistant(page)).to_contain_text("tokens/s")

    go_to(page, "Settings", "Settings")
    go_to(page, "Chat", "Chat")
    expect(system).to_have_value("Answer like a pirate.")
    send(page, "## second *turn*")
    reply = assistant(page)
    expect(reply).to_contain_text("tokens/s")
    sent = e2e_openai.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert sent.get("max_tokens") == 6
    # The fake stops at 6 tokens with finish "length": the answer says it was cut.
    expect(reply).to_contain_text("Cut off at the max output tokens")
    # Typed text is shown as typed: no heading, no emphasis.
    mine = page.get_by_test_id("stChatMessage").filter(
        has=page.get_by_test_id("stChatMessageAvatarUser")).last
    expect(mine).to_contain_text("## second *turn*")
    assert mine.locator("h1, h2, h3, em").count() == 0


def test_the_ready_note_goes_when_the_chat_starts(app, browser):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    expect(page.get_by_text("Ready: gpt-4o-mini")).to_be_visible()
    send(page, "hello")
    expect(assistant(page)).to_contain_text("tokens/s")
    expect(page.get_by_text("Ready: gpt-4o-mini")).to_have_count(0)


def test_a_failed_turn_offers_retry_and_is_not_sent_twice(app, browser, e2e_openai):
    page = app.open(browser)
    choose_model(page, "fault-500")
    send(page, "will fail")
    expect(page.get_by_role("main").get_by_test_id("stAlertContentError").first).to_be_visible()
    choose_model(page, "gpt-4o-mini")
    page.get_by_role("button", name="Retry").click()
    expect(assistant(page)).to_contain_text("Echo: will fail")
    expect(assistant(page)).to_contain_text("tokens/s")
    assert e2e_openai.requests[-1]["messages"] == [{"role": "user", "content": "will fail"}]
    expect(page.get_by_test_id("stChatMessage")).to_have_count(2)  # replaced, not added


def test_the_server_log_has_no_deprecation_warning(start_app, e2e_openai, browser):
    app = start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "hello")
    expect(assistant(page)).to_contain_text("tokens/s")
    page.get_by_role("button", name="New chat").click()
    settled(page)
    go_to(page, "Settings", "Settings")
    go_to(page, "Chat", "Chat")
    log = app.stderr.read_text()
    assert "deprecat" not in log.lower() and "use_container_width" not in log, log[-2000:]
