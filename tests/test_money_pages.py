"""Money on the pages: the pricing mode in Settings, the hard stop's sentences in the chat, and
the compare table and leaderboard showing amounts that tell calls apart."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from core import budget, money, pricing
from core.config import make_endpoint
from core.i18n import t
from tests.conftest import API_KEY, call_rows
from tests.test_app import app, fake_openai  # noqa: F401 - a fixture used below
from tests.test_usage import add


def settings(at):
    return at.switch_page("app_pages/settings.py").run()


def test_an_endpoint_is_marked_free_in_settings_and_the_hard_stop_lets_it_through(
        db, fake_openai):  # noqa: F811
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=True, eng=db)
    add(db, user="local", cost=Decimal(2))
    at = settings(app().run())
    assert not at.exception
    control = at.selectbox(key="pricing_OpenAI-compatible")
    assert control.value == "auto" and not control.disabled
    control.set_value("free").run()
    assert "OpenAI-compatible is now priced: Free." in at.success[0].value
    endpoint = make_endpoint("OpenAI-compatible", "custom", base_url=fake_openai.url,
                             api_key=API_KEY)
    assert pricing.pricing_mode(endpoint) == "free"  # kept in the database
    at = app().run()
    at.sidebar.selectbox(key="chat_model_OpenAI-compatible").set_value("gpt-4o").run()
    at.chat_input[0].set_value("free now?").run()
    assert not at.exception
    assert [e.value for e in at.error] == ["This month's budget is spent: $2.00 of $1.00."]
    assert call_rows(db)[-1]["status"] == "ok" and call_rows(db)[-1]["cost_usd"] == 0


def test_a_secrets_endpoint_shows_its_own_pricing_setting(db, openai_server):
    at = app()
    at.secrets["endpoints"] = [{"name": "Solo", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["gpt-4o-mini"],
                                "pricing": "catalog"}]
    at = settings(at.run())
    control = at.selectbox(key="pricing_Solo")
    assert control.value == "catalog" and control.disabled


def test_the_chat_says_how_to_price_a_model_the_hard_stop_refuses(db, openai_server):
    budget.set_budget(budget.DEPLOYMENT, "100", "USD", hard_stop=True, eng=db)
    at = app()
    at.secrets["endpoints"] = [{"name": "Paid", "base_url": openai_server.url,
                                "api_key": API_KEY, "models": ["house-model"],
                                "pricing": "priced"}]
    at.run()
    sent = len(openai_server.requests)
    at.chat_input[0].set_value("how much?").run()
    assert not at.exception
    said = " ".join(e.value for e in at.error)
    assert f"“house-model” ({openai_server.url}) has no price" in said
    assert "Usage → Prices" in said and "mark it free in Settings" in said
    assert len(openai_server.requests) == sent


COLS = [t("compare.ttft"), t("compare.total"), t("compare.tps"), t("compare.cost")]


def test_the_compare_table_shows_small_costs_and_the_free_model_is_the_cheapest():
    from core.ui.compare import styled_numbers

    df = pd.DataFrame([[0.4, 2.0, 50.0, 0.000038], [0.3, 1.0, 80.0, 0.0],
                       [0.5, 3.0, 40.0, None]],
                      index=["A · gpt-4o-mini", "B · llama3", "C · house"], columns=COLS)
    html = styled_numbers(df).to_html()
    assert "$0.000038" in html and ">free<" in html and ">unknown<" in html
    assert ">0.000<" not in html
    rules = html.split("</style>")[0]
    cost = df.columns.get_loc(t("compare.cost"))
    assert f"row1_col{cost}" in rules and f"row0_col{cost}" not in rules
    yuan = styled_numbers(df, money.View("CNY", Decimal(8))).to_html()
    assert "¥0.0003" in yuan  # 0.000038 × 8 = 0.000304


def test_the_leaderboard_shows_the_median_cost_as_money(db, fake_openai):  # noqa: F811
    from tests.test_compare_page import two_panes

    at = two_panes("Which is cheaper?")
    at.button(key=[b.key for b in at.button if b.key and "_win_0" in b.key][0]).click().run()
    assert not at.exception
    board = at.dataframe[0].value
    costs = list(board[t("compare.cost")])
    assert len(costs) == 2 and all(c.startswith("$0.0") and Decimal(c[1:]) > 0
                                   for c in costs), costs


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_hard_stop_sentences_exist_in_both_languages(lang):
    from core.i18n import set_language

    set_language(lang)
    try:
        said = t("error.budget_unpriced", model="qwen-odd", url="https://x.example")
        assert "qwen-odd" in said and "https://x.example" in said and "?" not in said
    finally:
        set_language("en")
