"""The usage page in AppTest with a seeded database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from streamlit.testing.v1 import AppTest

from core import budget, pricing
from tests.conftest import API_KEY, call_rows
from tests.test_app import app
from tests.test_usage import add
from tests.timing import WAIT_S


def page() -> AppTest:
    return AppTest.from_file("../app_pages/usage.py", default_timeout=WAIT_S)


def test_an_empty_ledger_says_how_to_fill_it(db):
    at = page().run()
    assert not at.exception
    assert "No calls yet" in at.info[0].value


def test_a_seeded_ledger_shows_totals_rows_and_unpriced_calls(db):
    now = datetime.now(UTC)
    add(db, user="local", at=now, cost=Decimal("0.25"))
    add(db, user="local", at=now, model='odd/"模型"', cost=None)
    at = page().run()
    assert not at.exception
    assert [m.value for m in at.metric][:1] == ["2"]
    assert "Cost of 1 calls; 1 without a price." in at.caption[0].value
    shown = at.dataframe[0].value
    assert set(shown["model"]) == {"gpt-4o-mini", 'odd/"模型"'}
    at.multiselect(key="usage_models").select('odd/"模型"').run()
    assert list(at.dataframe[0].value["model"]) == ['odd/"模型"']


@pytest.mark.parametrize("script", ["app_pages/chat.py", "app_pages/compare.py"])
def test_chat_and_compare_warn_at_80_and_stop_at_100_percent(db, script):
    at = app()
    at.run()
    at.switch_page(script).run()
    assert not at.exception and not at.warning and not at.error
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=True, eng=db)
    add(db, user="local", cost=Decimal("0.85"))
    at.run()
    assert "85% of this month's budget used" in at.warning[0].value
    add(db, user="local", cost=Decimal("0.30"))
    at.run()
    assert "This month's budget is spent: $1.15 of $1.00." in at.error[0].value


QWEN = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def seeded_prices(db) -> AppTest:
    add(db, user="local", cost=Decimal("0.01"))
    add(db, user="local", model="qwen-odd", endpoint="Qwen", base_url=QWEN, cost=None,
        input_tokens=1_000_000, output_tokens=0)
    at = page().run()
    assert not at.exception
    return at


def edit_prices(at: AppTest, row: dict, rate: float | None = None) -> AppTest:
    at.session_state["usage_prices_editor"] = {"edited_rows": {1: row}, "added_rows": [],
                                               "deleted_rows": []}
    if rate is not None:
        at.number_input(key="usage_rate").set_value(rate)
    return at.button(key="usage_prices_save").click().run()


def test_prices_in_force_are_listed_with_their_source_and_unknown_stays_empty(db):
    at = seeded_prices(db)
    table = at.data_editor(key="usage_prices_editor").value
    assert list(table["model"]) == ["gpt-4o-mini", "qwen-odd"]
    assert list(table.iloc[0][["input", "cached_input", "output", "currency", "source"]]) == [
        0.15, 0.075, 0.6, "USD", "catalog"]
    assert table.iloc[1][["input", "output"]].isna().all() and table.iloc[1]["source"] == \
        "no price"
    assert any("No price known for: qwen-odd" in w.value for w in at.warning)
    ledger = at.dataframe[0].value
    assert ledger[ledger["model"] == "qwen-odd"]["cost_usd"].isna().all()
    assert list(ledger[ledger["model"] == "qwen-odd"]["cost"]) == ["unknown"]


def test_a_price_set_in_place_reprices_past_calls_only_on_request(db):
    at = edit_prices(seeded_prices(db), {"input": 2.0, "output": 6.0, "currency": "CNY"},
                     rate=8.0)
    assert not at.exception and not at.error
    assert pricing.own_price("Qwen", "qwen-odd") == pricing.Price(
        Decimal(2), Decimal(6), None, "CNY")
    assert pricing.cny_per_usd() == Decimal(8)
    assert "Cost of 1 calls; 1 without a price." in at.caption[0].value  # past calls kept
    assert at.data_editor(key="usage_prices_editor").value.iloc[1]["source"] == "yours"
    assert "1 prices saved." in at.success[0].value
    at.button(key="usage_reprice").click().run()
    assert "1 past calls re-priced." in at.success[0].value
    assert "Cost of 2 calls; 0 without a price." in at.caption[0].value  # 2 CNY / 8 = $0.25
    assert "$0.26" in [m.value for m in at.metric]


@pytest.mark.parametrize(("row", "rate", "said"), [
    ({"input": -1.0, "output": 6.0}, None, "qwen-odd · Qwen: A price cannot be negative"),
    ({"input": "1,5", "output": 6.0}, None, "qwen-odd · Qwen: The input price is missing."),
    ({"input": 2.0, "output": 99999999.0}, None, "The output price is above 10,000"),
    ({"input": 2.0, "output": 6.0}, 0.0, "The conversion rate must be above 0."),
])
def test_bad_prices_get_a_sentence_and_nothing_is_saved(db, row, rate, said):
    at = edit_prices(seeded_prices(db), row, rate)
    assert not at.exception
    assert said in at.error[0].value and "Nothing was saved." in at.error[0].value
    assert pricing.own_price("Qwen", "qwen-odd") is None
    assert pricing.cny_per_usd() == pricing.DEFAULT_CNY_PER_USD


def test_the_chat_shows_what_to_do_when_the_hard_stop_refuses_a_call(db, openai_server):
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=True, eng=db)
    add(db, user="local", cost=Decimal("2"))
    at = app()
    at.secrets["endpoints"] = [{"name": "Solo", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["gpt-4o-mini"]}]
    at.run()
    sent = len(openai_server.requests)
    at.chat_input[0].set_value("over budget?").run()
    assert not at.exception
    said = [e.value for e in at.error]
    assert any("Raise the budget, or turn off the hard stop, on the Usage page" in s
               for s in said), said
    assert len(openai_server.requests) == sent  # nothing went out
    rows = [r for r in call_rows(db) if r["error_kind"] == "budget"]
    assert [(r["status"], r["source"]) for r in rows] == [("error", "chat")]


def save_budget(at: AppTest, amount: float | None, currency: str = "USD",
                hard: bool = True) -> AppTest:
    at.number_input(key="usage_budget_amount").set_value(amount)
    at.selectbox(key="usage_budget_currency").set_value(currency)
    at.checkbox(key="usage_budget_hard").check() if hard else at.checkbox(
        key="usage_budget_hard").uncheck()
    return at.button(key="usage_budget_save").click().run()


def test_the_budget_and_prices_tabs_are_there_before_the_first_call(db, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-" + "q" * 20)
    at = page().run()
    assert not at.exception
    assert [tab.label for tab in at.tabs] == ["Prices", "Budget"]
    table = at.data_editor(key="usage_prices_editor").value
    qwen = table[table["model"] == "qwen-plus"].iloc[0]
    assert (qwen["input"], qwen["output"], qwen["currency"]) == (0.8, 2.0, "CNY")
    assert qwen["source"].startswith("vendor list (help.aliyun.com, 2025")
    at = save_budget(at, 0.0)  # the owner sets a limit before anyone spends
    assert not at.exception and not at.error[1:]
    assert budget.get_budget() == budget.Budget(Decimal(0), "USD", True)
    assert "Budget saved: $0 a month" in at.success[0].value
    assert "The monthly budget is $0: only free models can be used." in at.error[0].value


def test_a_budget_keeps_its_currency_and_size_when_saved_again(db):
    at = save_budget(page().run(), 20000.0, "CNY")
    assert not at.exception and "Budget saved: ¥20,000.00 a month" in at.success[0].value
    assert at.selectbox(key="usage_budget_currency").value == "CNY"  # the saved value
    assert at.number_input(key="usage_budget_amount").value == 20000.0
    at = at.button(key="usage_budget_save").click().run()  # saved again, untouched
    assert budget.get_budget() == budget.Budget(Decimal(20000), "CNY", True)


@pytest.mark.parametrize(("amount", "currency", "said"), [
    (10_000_001.0, "USD", "A budget above 10,000,000 USD is refused"),
    (1e12, "CNY", "A budget above 10,000,000 CNY is refused"),
])
def test_a_budget_above_its_bound_is_refused_naming_the_bound(db, amount, currency, said):
    budget.set_budget(budget.DEPLOYMENT, "5", "USD")
    at = save_budget(page().run(), amount, currency)
    assert not at.exception
    assert said in at.error[0].value and "Nothing was saved." in at.error[0].value
    assert budget.get_budget() == budget.Budget(Decimal(5), "USD", False)


def test_a_saved_budget_shows_at_once_with_the_digits_that_matter(db):
    add(db, user="local", cost=Decimal("0.0034"))
    add(db, user="local", model="house-model", cost=None)
    at = page().run()
    at = save_budget(at, 0.001, "USD", hard=False)
    assert not at.exception
    assert "Budget saved: $0.001 a month." in at.success[0].value
    said = [e.value for e in at.error]
    assert "This month's budget is spent: $0.0034 of $0.001." in said
    assert any("1 calls this month have no price" in w.value for w in at.warning)


def test_minus_zero_typed_as_a_price_is_saved_and_shown_as_zero(db):
    at = edit_prices(seeded_prices(db), {"input": -0.0, "output": 1.5, "currency": "USD"})
    assert not at.exception and not at.error
    assert pricing.own_price("Qwen", "qwen-odd") == pricing.Price(Decimal(0), Decimal("1.5"))
    row = at.data_editor(key="usage_prices_editor").value.iloc[1]
    assert (str(row["input"]), row["output"], row["source"]) == ("0.0", 1.5, "yours")


def test_the_usage_page_shows_money_in_the_currency_chosen(db):
    add(db, user="local", cost=Decimal("0.25"))
    at = page().run()
    assert "$0.25" in [m.value for m in at.metric]
    at.segmented_control(key="usage_show_in").set_value("CNY").run()
    assert "¥1.78" in [m.value for m in at.metric]  # 0.25 × 7.1 = 1.775
    assert list(at.dataframe[0].value["cost"]) == ["¥1.78"]
    assert page().run().segmented_control(key="usage_show_in").value == "CNY"  # kept
