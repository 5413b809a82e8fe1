"""Money that is never wrong: the deployment's prices and budgets, the hard stop under bad input,
what never reached a model, interrupted calls, the vendor table and the one money formatter."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from core import budget, metering, money, pricing, store
from core.config import PRESETS, make_endpoint
from core.i18n import t
from core.metering import Call
from core.providers import Message
from core.providers.base import Usage
from tests.conftest import API_KEY, call_rows
from tests.test_usage import add

HI = [Message("user", "hi")]
GPT = make_endpoint("OpenAI", "openai", api_key="sk-x" * 4)


def gateway(server, **kw):
    return make_endpoint("gw", "custom", base_url=server.url, api_key=API_KEY, source="env", **kw)


# -- 9. one money formatter ---------------------------------------------------------------------


@pytest.mark.parametrize(("usd", "shown"), [
    (Decimal("0.000038"), "$0.000038"), (Decimal("0.00003812"), "$0.000038"),
    (Decimal("0.0034"), "$0.0034"), (Decimal("0.001"), "$0.001"), (Decimal("0.5"), "$0.50"),
    (Decimal("1234.5"), "$1,234.50"), (0.000038, "$0.000038"), (Decimal(0), "free"),
    (None, "unknown"), (float("nan"), "unknown"),
])
def test_money_keeps_the_digits_that_tell_calls_apart(usd, shown):
    assert money.cost(usd) == shown


def test_money_in_the_viewers_currency_and_a_partial_sum_is_marked(db):
    yuan = money.View("CNY", Decimal(8))
    assert money.cost(Decimal("0.25"), yuan) == "¥2.00"
    assert money.cost(Decimal("0.000001"), partial=True) == "$0.000001+"  # not "$0.000000+"
    assert money.cost(Decimal(0), partial=True) == "$0+"
    assert money.amount(Decimal(20000), "CNY") == "¥20,000.00"
    assert money.view("ana").currency == "USD"
    budget.set_budget(budget.DEPLOYMENT, "1000", "CNY", eng=db)
    money.forget()
    assert money.view("ana").currency == "CNY"  # the deployment budget's, until one is chosen
    money.set_currency("ana", "USD")
    assert money.view("ana") == money.View("USD", pricing.DEFAULT_CNY_PER_USD)


# -- 3, 8. bad input: budgets and prices --------------------------------------------------------


@pytest.mark.parametrize(("amount", "currency", "kept"), [
    ("0", "USD", Decimal(0)), (0.0, "USD", Decimal(0)), ("20000", "CNY", Decimal(20000)),
    ("10000000", "USD", Decimal(10_000_000)), ("-0", "USD", Decimal(0)), ("", "USD", None),
])
def test_a_budget_keeps_its_size_and_currency(db, amount, currency, kept):
    found = budget.set_budget(budget.DEPLOYMENT, amount, currency, hard_stop=True, eng=db)
    assert (found and found.amount, found and found.currency) == (
        (kept, currency) if kept is not None else (None, None))
    if kept is not None:
        assert str(budget.get_budget(eng=db).amount.normalize()) == str(kept.normalize())


@pytest.mark.parametrize(("amount", "currency", "key", "said"), [
    ("-1", "USD", "prices.err_negative", "cannot be negative"),
    ("abc", "USD", "prices.err_number", "“abc” is not a number"),
    ("1e12", "USD", "budget.err_huge", "A budget above 10,000,000 USD is refused"),
    ("10000001", "USD", "budget.err_huge", "A budget above 10,000,000 USD is refused"),
    ("10000001", "CNY", "budget.err_huge", "A budget above 10,000,000 CNY is refused"),
    ("1,500", "USD", "prices.err_comma", "a comma is ambiguous"),
    ("10", "EUR", "prices.err_currency", "EUR is not USD or CNY"),
])
def test_a_bad_budget_is_refused_with_a_sentence_and_nothing_changes(db, amount, currency, key,
                                                                    said):
    budget.set_budget(budget.DEPLOYMENT, "5", "USD", eng=db)
    with pytest.raises(pricing.PriceError) as err:
        budget.set_budget(budget.DEPLOYMENT, amount, currency, hard_stop=True, eng=db)
    assert err.value.key == key and said in t(err.value.key, **err.value.context)
    assert budget.get_budget(eng=db) == budget.Budget(Decimal(5), "USD", False)


@pytest.mark.parametrize("typed", ["1,5", "1,500", " 2,000.5 "])
def test_an_ambiguous_comma_in_a_price_is_refused_naming_row_and_column(typed):
    with pytest.raises(pricing.PriceError) as err:
        pricing.parse_price("0.1", None, typed, row="qwen-odd · Qwen")
    from core.ui.usage import price_error

    said = price_error(err.value)
    assert err.value.key == "prices.err_comma"
    assert said.startswith("qwen-odd · Qwen: ") and "output column" in said
    assert typed.strip() in said


@pytest.mark.parametrize("typed", ["-0", -0.0, "-0.000", "0"])
def test_minus_zero_is_zero(typed):
    price = pricing.parse_price(typed, typed, "1")
    assert price.input == 0 and str(price.input) == "0" and str(price.cached_input) == "0"


def test_a_price_typed_as_a_number_is_kept_as_shown(db):
    price = pricing.parse_price(1.5, None, 0.000038)
    pricing.set_price("*", "m", price)
    assert pricing.own_price("any", "m") == pricing.Price(Decimal("1.5"), Decimal("0.000038"))


# -- 0. one bill: the deployment's prices, budget, and per-person caps --------------------------


def test_prices_and_the_rate_belong_to_the_deployment(db):
    used = Usage(input_tokens=1_000_000)
    pricing.set_price("*", "house-model", pricing.Price(Decimal(8), Decimal(8), currency="CNY"))
    pricing.set_cny_per_usd("8")
    now = datetime.now(UTC)
    # Whoever calls: one price, one rate.
    assert pricing.cost(GPT, "house-model", used, now) == Decimal(1)


def test_enforce_checks_the_deployment_budget_and_the_persons_own_cap(db):
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=True, eng=db)
    budget.set_budget("ana", "0.1", "USD", hard_stop=True, eng=db)
    add(db, user="ana", cost=Decimal("0.2"))
    with pytest.raises(budget.BudgetExceeded) as err:
        budget.enforce("ana", GPT, "gpt-4o-mini", eng=db)  # her own cap is spent
    assert err.value.budget.user_id == "ana"
    budget.enforce("bo", GPT, "gpt-4o-mini", eng=db)  # the deployment's is not: bo goes on
    add(db, user="bo", cost=Decimal("0.9"))  # everyone's calls spend the one budget
    with pytest.raises(budget.BudgetExceeded) as err:
        budget.enforce("bo", GPT, "gpt-4o-mini", eng=db)
    assert err.value.budget.user_id == budget.DEPLOYMENT
    assert {s.budget.user_id: s.level for s in budget.statuses("ana", eng=db)} == {
        budget.DEPLOYMENT: "over", "ana": "over"}


def test_a_cny_budget_is_checked_in_yuan(db):
    budget.set_budget(budget.DEPLOYMENT, "20000", "CNY", hard_stop=True, eng=db)
    add(db, user="ana", cost=Decimal(2000))  # $2,000 = 14,200 CNY at 7.1: 71%
    budget.enforce("ana", GPT, "gpt-4o-mini", eng=db)
    found = budget.status("ana", eng=db)
    assert found.spent == Decimal("14200.0") and found.level is None


def test_a_budget_of_zero_lets_free_models_only(db, ollama_server):
    budget.set_budget(budget.DEPLOYMENT, "0", "USD", hard_stop=True, eng=db)
    with pytest.raises(budget.BudgetExceeded):
        budget.enforce("ana", GPT, "gpt-4o-mini", eng=db)
    ollama = make_endpoint("Ollama", "ollama", base_url=ollama_server.url)
    budget.enforce("ana", ollama, "llama3.2:1b", eng=db)


# -- 1. interrupted calls are priced ------------------------------------------------------------


def test_an_interrupted_call_is_priced_with_its_estimated_tokens_and_counts(db):
    stale = datetime.now(UTC) - timedelta(minutes=5)
    for model in ("gpt-4o-mini", "no-such-model"):
        add(db, user="ana", at=stale, model=model, status="running", cost=None, input_tokens=6,
            output_tokens=40, estimated=True, heartbeat_at=stale, ttft_s=None, total_s=None)
    assert metering.mark_interrupted(db, endpoints=[GPT]) == 2
    rows = {r["model"]: r for r in call_rows(db)}
    used = Usage(input_tokens=6, output_tokens=40)
    expected = pricing.catalog_cost(GPT, "gpt-4o-mini", used, stale)
    assert rows["gpt-4o-mini"]["status"] == "interrupted" and rows["gpt-4o-mini"]["estimated"]
    assert rows["gpt-4o-mini"]["cost_usd"] == pytest.approx(expected) and expected > 0
    assert rows["no-such-model"]["cost_usd"] is None  # unknown stays unknown, never 0
    # The hard stop counts it: with a budget of exactly that spend, the next call is refused.
    budget.set_budget(budget.DEPLOYMENT, str(expected), "USD", hard_stop=True, eng=db)
    with pytest.raises(budget.BudgetExceeded):
        budget.enforce("ana", GPT, "gpt-4o-mini", eng=db)
    assert budget.status("ana", eng=db).unpriced == 1  # and the unpriced one is told


# -- 2. the hard stop cannot be walked around ---------------------------------------------------


def test_an_unpriced_model_is_refused_with_a_hard_stop_and_told_how_to_price_it(db,
                                                                              openai_server):
    budget.set_budget(budget.DEPLOYMENT, "100", "USD", hard_stop=True, eng=db)
    endpoint = gateway(openai_server)
    pricing.set_pricing_mode(endpoint, "priced")  # a paid gateway on this machine
    sent = len(openai_server.requests)
    call = Call(endpoint, "house-model", HI, user_id="ana", eng=db).run_sync(10)
    assert len(openai_server.requests) == sent  # nothing went out
    assert call.status == "error" and call.error.hint == "error.budget_unpriced"
    said = t(call.error.hint, **call.error.context)
    assert f"“house-model” ({endpoint.base_url}) has no price" in said
    assert "Usage → Prices" in said and "mark it free in Settings" in said
    [row] = call_rows(db)
    assert (row["status"], row["error_kind"], row["cost_usd"]) == ("error", "budget", 0)
    # Priced, it may go (the budget is not spent); marked free, it may go whatever is spent.
    pricing.set_price("gw", "house-model", pricing.Price(Decimal(1), Decimal(1)))
    budget.enforce("ana", endpoint, "house-model", eng=db)
    pricing.delete_price("gw", "house-model")
    pricing.set_pricing_mode(endpoint, "free")
    add(db, user="ana", cost=Decimal(500))
    budget.enforce("ana", endpoint, "house-model", eng=db)


def test_without_a_hard_stop_an_unpriced_model_goes_on(db):
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=False, eng=db)
    budget.enforce("ana", GPT, "house-model", eng=db)


def test_a_secrets_endpoint_keeps_its_pricing_setting(db):
    secret = make_endpoint("S", "custom", base_url="https://llm.example.com/v1",
                           api_key="k" * 16, source="secrets", pricing="free")
    with pytest.raises(pricing.PriceError):
        pricing.set_pricing_mode(secret, "priced")
    assert pricing.pricing_mode(secret) == "free"


# -- 7. what never reached the model costs nothing; free is never refused ------------------------


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_request_that_never_reached_the_model_costs_nothing(db, openai_server):
    dead = make_endpoint("Dead", "custom", base_url=f"http://127.0.0.1:{dead_port()}/v1",
                         api_key=API_KEY, source="env")
    refused = Call(dead, "gpt-4o-mini", HI, user_id="ana", eng=db).run_sync(30)
    wrong_key = make_endpoint("gw", "custom", base_url=openai_server.url, api_key="sk-wrong" * 3)
    unauthorized = Call(wrong_key, "gpt-4o-mini", HI, user_id="ana", eng=db).run_sync(30)
    limited = Call(gateway(openai_server), "fault-429", HI, user_id="ana", eng=db).run_sync(30)
    assert [c.error.kind for c in (refused, unauthorized, limited)] == [
        "connection", "auth", "rate_limited"]
    assert [c.cost for c in (refused, unauthorized, limited)] == [0, 0, 0]
    assert [r["cost_usd"] for r in call_rows(db)] == [0, 0, 0]


def test_a_local_ollama_call_goes_through_with_the_budget_spent(db, ollama_server):
    budget.set_budget(budget.DEPLOYMENT, "1", "USD", hard_stop=True, eng=db)
    add(db, user="local", cost=Decimal(2))
    ollama = make_endpoint("Ollama", "ollama", base_url=ollama_server.url)
    call = Call(ollama, "llama3.2:1b", HI, user_id="local", eng=db).run_sync(30)
    assert call.status == "ok" and call.text and call.cost == 0


# -- 11. every preset's default models have a price ---------------------------------------------


@pytest.mark.parametrize(("preset", "model"), [
    (p.id, m) for p in PRESETS.values() for m in p.default_models])
def test_every_presets_default_model_has_a_price(db, preset, model):
    endpoint = make_endpoint(PRESETS[preset].label, preset, api_key="k" * 16)
    price, source = pricing.price_in_force(endpoint, model)
    assert price is not None and source in ("catalog", "vendor"), (preset, model)


def test_the_vendor_table_prices_qwen_in_yuan_below_the_deployments_own(db):
    qwen = make_endpoint("Qwen", "qwen", api_key="k" * 16)
    price, source = pricing.price_in_force(qwen, "qwen-plus")
    assert (source, price.currency) == ("vendor", "CNY")
    entry = pricing.vendor_price(qwen, "qwen-plus")
    assert entry.source.startswith("https://help.aliyun.com/") and entry.read
    pricing.set_cny_per_usd("8")
    cost = pricing.cost(qwen, "qwen-plus", Usage(input_tokens=1_000_000), datetime.now(UTC))
    assert cost == price.input / 8
    pricing.set_price("*", "qwen-plus", pricing.Price(Decimal(1), Decimal(1), currency="CNY"))
    assert pricing.price_in_force(qwen, "qwen-plus")[1] == "yours"
    assert pricing.vendor_price(make_endpoint("Kimi", "moonshot", api_key="k" * 16),
                                "qwen-plus") is None  # another vendor's model is not matched


def test_every_vendor_entry_names_its_page_date_and_a_preset(db):
    for entry in pricing.vendor_table():
        assert entry.vendor in PRESETS and entry.source.startswith("https://") and entry.read
        assert entry.price.currency in pricing.CURRENCIES


def test_a_budget_table_row_is_one_per_scope(db):
    budget.set_budget(budget.DEPLOYMENT, "3", "USD", eng=db)
    budget.set_budget(budget.DEPLOYMENT, "4", "CNY", eng=db)
    with db.connect() as conn:
        assert conn.execute(store.budgets.select()).all() == [
            (budget.DEPLOYMENT, Decimal(4), "CNY", False)]
