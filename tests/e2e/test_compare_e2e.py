"""Compare in a real browser: two panes stream at once, numbers, a vote, the leaderboard, blind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from core import store
from tests.conftest import API_KEY, call_rows
from tests.e2e.conftest import screenshot
from tests.fakes import FakeOpenAIServer
from tests.timing import NEVER_S, wait_until

# The panes' figures tables, not the leaderboard's (which sits in an expander).
NUMBERS = ("[data-testid='stDataFrame']"
           ":not([data-testid='stExpander'] [data-testid='stDataFrame'])")


@pytest.fixture(scope="module")
def e2e_openai() -> Iterator[FakeOpenAIServer]:
    """Answers of 200 tokens at 80 tokens/s (2.5 s): long enough to see both panes stream;
    fault-slow's first token never comes within a test."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=200, rate=80,
                          slow_first_token=NEVER_S) as server:
        yield server


@pytest.fixture(scope="module")
def app(start_app, e2e_openai):
    return start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)


def pick(page, key: str, model: str) -> None:
    box = page.locator(f"[class*='st-key-{key}']").get_by_test_id("stSelectbox")
    box.click()
    page.keyboard.type(model)
    page.keyboard.press("Enter")
    expect(box.get_by_role("combobox")).to_have_value(model)


def send(page, text: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def votes(app, n: int) -> list:
    def stored() -> list:
        with app.db.connect() as conn:
            rows = conn.execute(select(store.comparison_votes)).all()
        return rows if len(rows) >= n else []

    return wait_until(stored, what=f"{n} vote(s) stored")


def test_two_panes_stream_at_once_then_numbers_vote_and_leaderboard(app, browser):
    page = app.open(browser, "/compare")
    pick(page, "cmp_model_0_OpenAI-compatible", "gpt-4o-mini")
    pick(page, "cmp_model_1_OpenAI-compatible", "gpt-4o")
    send(page, "Race you")
    # Both panes are mid-answer at the same moment: two cursors on screen.
    expect(page.get_by_text("▌")).to_have_count(2)
    expect(page.locator(NUMBERS)).to_be_visible()
    rows = call_rows(app.db)
    assert {r["model"] for r in rows[-2:]} == {"gpt-4o-mini", "gpt-4o"}
    expect(page.get_by_test_id("stVegaLiteChart").locator("canvas, svg").first).to_be_visible()
    screenshot(page, "compare.png")  # the README's picture of this page
    page.get_by_role("button", name="A is best").click()
    expect(page.get_by_text("Vote recorded.")).to_be_visible()
    [vote] = votes(app, 1)
    assert (vote.outcome, vote.winner) == ("win", 0)
    page.get_by_text("Leaderboard", exact=True).click()
    board = page.get_by_test_id("stExpander").get_by_test_id("stDataFrame")
    expect(board).to_be_visible()
    expect(board).to_contain_text("gpt-4o-mini @ OpenAI-compatible")


def test_blind_mode_reveals_the_names_only_after_the_vote(app, browser):
    page = app.open(browser, "/compare")
    page.get_by_text("Blind mode").click()
    expect(page.get_by_text("Model pool")).to_be_visible()
    send(page, "Who am I talking to")
    expect(page.get_by_role("button", name="Tie")).to_be_visible()
    # A pane's title names its model, "A · gpt-4o (OpenAI-compatible)", once revealed.
    names = page.get_by_text("(OpenAI-compatible)")
    expect(page.get_by_text("Echo: Who am I talking to").first).to_be_visible()
    expect(names).to_have_count(0)
    expect(page.locator(NUMBERS)).to_have_count(0)  # no figures before the vote
    page.get_by_role("button", name="Tie").click()
    expect(names).to_have_count(2)
    expect(page.locator(NUMBERS)).to_have_count(1)  # now the figures too
    expect(page.get_by_test_id("stVegaLiteChart").locator("canvas, svg").first).to_be_visible()
    screenshot(page, "compare-blind-voted.png")


def test_stop_while_one_pane_waits_for_its_first_token_keeps_the_other(app, browser):
    page = app.open(browser, "/compare")
    pick(page, "cmp_model_0_OpenAI-compatible", "gpt-4o-mini")
    pick(page, "cmp_model_1_OpenAI-compatible", "fault-slow")  # no first token in a test
    before = len(call_rows(app.db))
    send(page, "Stop us")
    expect(page.get_by_text("Echo: Stop us").first).to_be_visible()
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.get_by_role("button", name="Tie")).to_be_visible()
    rows = app.wait_log(lambda rows: len(rows) >= before + 2 and all(
        r["status"] != "running" for r in rows[before:]), "both calls to settle")
    assert {r["model"]: r["status"] for r in rows[before:]}["fault-slow"] == "stopped"
