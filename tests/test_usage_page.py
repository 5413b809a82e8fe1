"""The usage page in AppTest with a seeded database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from streamlit.testing.v1 import AppTest

from core import budget
from tests.test_app import app
from tests.test_usage import add


def page() -> AppTest:
    return AppTest.from_file("../app_pages/usage.py", default_timeout=30)


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
    budget.set_budget("local", "1", "USD", hard_stop=True, eng=db)
    add(db, user="local", cost=Decimal("0.85"))
    at.run()
    assert "85% of this month's budget used" in at.warning[0].value
    add(db, user="local", cost=Decimal("0.30"))
    at.run()
    assert "This month's budget is spent: 1.15 of 1.00 USD." in at.error[0].value
