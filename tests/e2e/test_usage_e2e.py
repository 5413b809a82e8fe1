"""The usage page in a real browser: two chat calls, their rows, a filter, the CSV export."""

from __future__ import annotations

import csv
import io

import pytest
from playwright.sync_api import Page, expect

from core import money
from tests.conftest import API_KEY
from tests.e2e.conftest import choose_model, screenshot, send


@pytest.fixture(scope="module")
def app(start_app, e2e_openai):
    return start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)


def settled(page: Page) -> None:
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning")


def ledger_text(page: Page) -> str:
    # The grid draws on a canvas; its accessible table holds the visible cells' text.
    cells = page.get_by_test_id("stDataFrame").first.locator("td")
    expect(cells.first).to_be_attached()
    return " | ".join(cells.all_text_contents())


def test_an_empty_ledger_says_how_to_fill_it(app, browser):
    page = app.open(browser, "/usage")
    expect(page.get_by_text("No calls yet. Every message you send is logged here")).to_be_visible()
    page.context.close()


def test_a_budget_is_set_in_the_browser_before_the_first_call(app, browser):
    page = app.open(browser, "/usage")
    page.get_by_role("tab", name="Budget").click()
    amount = page.locator("[class*='st-key-usage_budget_amount'] input")
    amount.fill("20000")
    page.locator("[class*='st-key-usage_budget_currency']").click()
    page.get_by_role("option", name="CNY").click()
    page.locator("[class*='st-key-usage_budget_save'] button").click()
    expect(page.get_by_text("Budget saved: ¥20,000.00 a month.")).to_be_visible()
    page.reload()
    settled(page)
    page.get_by_role("tab", name="Budget").click()
    # What was saved is what is shown: the amount as typed, in the currency it was saved in.
    expect(page.locator("[class*='st-key-usage_budget_amount'] input")).to_have_value("20000")
    expect(page.get_by_role("combobox", name="Currency")).to_have_value("CNY")
    page.context.close()


def test_two_chat_calls_show_up_filter_and_export(app, browser):
    page = app.open(browser)
    for n, model in enumerate(("gpt-4o-mini", "gpt-4o"), start=1):
        choose_model(page, model)
        send(page, f"Question {n} for {model}")
        app.wait_rows(n)
        settled(page)
    rows = app.wait_rows(2)
    assert [r["model"] for r in rows] == ["gpt-4o-mini", "gpt-4o"]
    assert all(r["status"] == "ok" and r["cost_usd"] for r in rows)

    page.goto(app.url + "/usage")
    settled(page)
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    shown = ledger_text(page)
    for r in rows:
        # The accessible cells hold the row's time, model, tokens, and its cost as money.
        cells = f"{r['model']} | {r['input_tokens']} | {r['cached_input_tokens']} | " \
                f"{r['output_tokens']} | "
        assert cells in shown, shown
        cost = shown.split(cells, 1)[1].split(" | ", 1)[0]
        assert cost == money.cost(r["cost_usd"])
    screenshot(page, "usage.png")  # the README image; `python dev.py screenshots` copies it

    box = page.locator("[class*='st-key-usage_models']").get_by_test_id("stMultiSelect")
    box.click()
    page.keyboard.type("gpt-4o-mini")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    settled(page)
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("1")
    assert "gpt-4o-mini" in ledger_text(page)

    with page.expect_download() as info:
        page.locator("[class*='st-key-usage_csv']").get_by_role("button").click()
    body = info.value.path().read_text(encoding="utf-8-sig")
    exported = list(csv.DictReader(io.StringIO(body)))
    assert [(e["model"], int(e["input_tokens"]), int(e["output_tokens"])) for e in exported] \
        == [("gpt-4o-mini", rows[0]["input_tokens"], rows[0]["output_tokens"])]
    assert float(exported[0]["cost_usd"]) == pytest.approx(float(rows[0]["cost_usd"]))
    page.context.close()
