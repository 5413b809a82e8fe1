"""Stop in a real browser: the request is dropped, the partial answer kept with its numbers,
and a message sent right after is answered in full."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import API_KEY
from tests.e2e.conftest import assistants, choose_model, send
from tests.timing import WAIT_S

STOPPED = "Stopped. The partial answer is kept."


@pytest.fixture(scope="module")
def app(start_app, e2e_openai):
    return start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)


@pytest.fixture
def long_answers(e2e_openai):
    """Answers of 300 tokens at 150 a second: two seconds to click Stop in."""
    e2e_openai.tokens, e2e_openai.rate = 300, 150
    yield
    e2e_openai.tokens, e2e_openai.rate = 40, 80




def stop_button(page: Page):
    return page.locator("[class*='st-key-owngpt_stop_']").get_by_role("button")


def test_stop_mid_answer_then_a_message_sent_at_once_is_answered_in_full(
        app, browser, long_answers):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "First question")
    first = assistants(page).last
    expect(first).to_contain_text("Echo: First question")
    expect(first).to_contain_text("▌")  # mid-answer
    stop_button(page).click()
    expect(page.get_by_text(STOPPED)).to_be_visible()
    first = assistants(page).last
    # Generated and billed: the stopped answer shows its tokens (estimated) and its cost.
    expect(first).to_contain_text("tokens (estimated)")
    # A gateway answering as a catalog model is priced, even on this machine.
    expect(first).to_contain_text("$")
    expect(first).not_to_contain_text("▌")
    send(page, "Second question")  # right away: nothing scheduled may cut it off
    second = assistants(page).nth(1)
    expect(second).to_contain_text("Echo: Second question")
    expect(second).to_contain_text("tokens/s")  # finished, with its numbers
    expect(second).not_to_contain_text("▌")
    expect(page.get_by_text(STOPPED)).to_have_count(1)
    expect(stop_button(page)).to_have_count(0)
    rows = app.wait_rows(2)
    assert [r["status"] for r in rows[-2:]] == ["stopped", "ok"]
    assert rows[-2]["output_tokens"] > 0 and rows[-2]["estimated"]
    assert rows[-1]["output_tokens"] == 300


def test_stop_while_the_first_token_is_coming_drops_the_request(app, browser, e2e_openai):
    page = app.open(browser)
    choose_model(page, "fault-slow")  # the first token never comes within a test
    expect(page.get_by_text("Ready: fault-slow")).to_be_visible()
    hangups = len(e2e_openai.hangups)
    send(page, "Please stop me")
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    stop_button(page).click()
    # Only the app hanging up ends this request: the server would wait for ever.
    assert e2e_openai.wait_for_hangups(hangups + 1, timeout=WAIT_S), "the request was never dropped"
    expect(page.get_by_text(STOPPED)).to_be_visible()
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("Please stop me")
    rows = app.wait_rows(1)
    assert rows[-1]["status"] == "stopped" and rows[-1]["input_tokens"] > 0


def test_a_message_sent_while_an_answer_streams_stops_it_and_is_answered(
        app, browser, long_answers):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "Long one")
    expect(assistants(page).last).to_contain_text("▌")
    send(page, "Next one")  # no Stop click: the new message replaces the stream
    expect(assistants(page).nth(1)).to_contain_text("tokens/s")
    first, second = assistants(page).nth(0), assistants(page).nth(1)
    expect(first).to_contain_text(STOPPED)
    expect(second).to_contain_text("Echo: Next one")
    users = page.get_by_test_id("stChatMessage").filter(
        has=page.get_by_test_id("stChatMessageAvatarUser"))
    expect(users).to_have_count(2)
    rows = app.wait_rows(2)
    assert [r["status"] for r in rows[-2:]] == ["stopped", "ok"]


def test_a_rerun_mid_answer_leaves_the_answer_streaming_to_its_end(app, browser, long_answers):
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "Keep going")
    expect(assistants(page).last).to_contain_text("▌")
    # Any widget reruns the script, here the language: the answer goes on, live, to its end.
    box = page.locator("[class*='st-key-language']").get_by_test_id("stSelectbox")
    box.click()
    page.get_by_role("option", name="中文").click()
    reply = assistants(page).last
    expect(reply).to_contain_text("Echo: Keep going")
    expect(reply).to_contain_text("tokens/")  # the numbers of a finished answer
    expect(reply).not_to_contain_text("▌")
    rows = app.wait_rows(1)
    assert rows[-1]["status"] == "ok" and rows[-1]["output_tokens"] == 300
