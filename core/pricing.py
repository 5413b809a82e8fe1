"""What a call cost, in US dollars, decided per endpoint: free, the catalog's, or the user's price.

An endpoint's `pricing` setting chooses: "free" (always 0), "catalog" (genai-prices only),
"own" (the user's prices only), or "auto": the user's price, else 0 for Ollama, else the
catalog's, else 0 for a server on this machine or a private network whose model the catalog
does not know. So a private gateway (one-api, LiteLLM) forwarding to gpt-4o is priced like
gpt-4o whatever its address, and a local vLLM serving its own model costs nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import urlparse

import genai_prices
from sqlalchemy import Engine, and_, case, literal, select

from core import store
from core.config import Endpoint, Kind, preset_for_url
from core.providers.base import Usage

MILLION = Decimal(1_000_000)
CURRENCIES = ("USD", "CNY")
PRICING_MODES = ("auto", "free", "catalog", "own")
# Per million tokens. The dearest model listed anywhere is well under this; a larger number
# is a typo (a price per token typed as per million, a stray digit), refused with a sentence.
MAX_PRICE_PER_MTOK = Decimal(10_000)
# Yuan per US dollar until the user sets their own (their bank's rate, their invoice's).
DEFAULT_CNY_PER_USD = Decimal("7.1")
RATE_PREFERENCE = "cny_per_usd"
Source = Literal["yours", "catalog", "free", "none"]


class PriceError(ValueError):
    """A price that cannot be used; `key` names the i18n sentence, `context` fills it."""

    def __init__(self, key: str, **context: Any) -> None:
        super().__init__(key)
        self.key = key
        self.context = context


@dataclass(frozen=True)
class Price:
    """Money per million tokens, in `currency` (USD or CNY, as the vendor bills)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    currency: str = "USD"

    def cost(self, usage: Usage) -> Decimal:
        """The money this usage costs at this price, in the price's currency."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        )
        return total / MILLION

    def cost_usd(self, usage: Usage, cny_per_usd: Decimal) -> Decimal:
        """The cost converted to US dollars (the ledger's one currency)."""
        money = self.cost(usage)
        return money if self.currency == "USD" else money / cny_per_usd


def parse_amount(value: Any, *, field: str, allow_empty: bool = False) -> Decimal | None:
    """A price or amount typed by a user, checked: a number, not negative, not absurd."""
    if value is None or (isinstance(value, str) and not value.strip()) or (
            isinstance(value, float) and value != value):  # NaN is how an emptied cell reads
        if allow_empty:
            return None
        raise PriceError("prices.err_missing", field=field)
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except (InvalidOperation, ValueError):
        raise PriceError("prices.err_number", field=field, value=str(value)[:40]) from None
    if not amount.is_finite():
        raise PriceError("prices.err_number", field=field, value=str(value)[:40])
    if amount < 0:
        raise PriceError("prices.err_negative", field=field)
    if amount > MAX_PRICE_PER_MTOK:
        raise PriceError("prices.err_huge", field=field, limit=f"{MAX_PRICE_PER_MTOK:,}")
    return amount


def parse_price(input: Any, cached_input: Any, output: Any, currency: Any = "USD") -> Price:
    """A Price from what a user typed in the prices table; PriceError says what is wrong."""
    if currency not in CURRENCIES:
        raise PriceError("prices.err_currency", value=str(currency)[:10])
    parsed_input = parse_amount(input, field="input")
    parsed_output = parse_amount(output, field="output")
    assert parsed_input is not None and parsed_output is not None
    return Price(parsed_input, parsed_output,
                 parse_amount(cached_input, field="cached", allow_empty=True), currency)


# The user's prices and rate, read once a minute rather than once per call: the lookup sits at
# the end of every stream. Setting either here clears it at once; another process sees it
# within TTL.
PRICES_TTL_S = 60.0
_Known = tuple[dict[tuple[str, str], Price], Decimal]
_price_cache: dict[tuple[str, str], tuple[float, _Known]] = {}
_price_lock = threading.Lock()


def _user_prices(user_id: str, eng: Engine) -> _Known:
    key = (str(eng.url), user_id)
    now = time.monotonic()
    with _price_lock:
        cached = _price_cache.get(key)
    if cached is not None and now - cached[0] < PRICES_TTL_S:
        return cached[1]
    p = store.prices.c
    query = select(p.endpoint, p.model, p.input_per_mtok, p.output_per_mtok,
                   p.cached_input_per_mtok, p.currency).where(p.user_id == user_id)
    with eng.connect() as conn:
        found = {
            (r.endpoint, r.model): Price(
                Decimal(r.input_per_mtok), Decimal(r.output_per_mtok),
                None if r.cached_input_per_mtok is None else Decimal(r.cached_input_per_mtok),
                r.currency or "USD")
            for r in conn.execute(query)
        }
    rate = cny_per_usd(user_id, eng=eng)
    with _price_lock:
        _price_cache[key] = (now, (found, rate))
    return found, rate


def _forget(eng: Engine, user_id: str) -> None:
    with _price_lock:
        _price_cache.pop((str(eng.url), user_id), None)


def cny_per_usd(user_id: str, *, eng: Engine | None = None) -> Decimal:
    """The user's conversion rate (yuan per dollar), else the default."""
    value = store.get_preference(user_id, RATE_PREFERENCE, None, eng=eng)
    try:
        rate = Decimal(str(value)) if value is not None else DEFAULT_CNY_PER_USD
    except InvalidOperation:
        return DEFAULT_CNY_PER_USD
    return rate if rate.is_finite() and rate > 0 else DEFAULT_CNY_PER_USD


def set_cny_per_usd(user_id: str, rate: Any, *, eng: Engine | None = None) -> Decimal:
    """Keep the user's conversion rate; a zero, negative or non-numeric rate is refused."""
    parsed = parse_amount(rate, field="rate")
    if parsed is None or parsed == 0:
        raise PriceError("prices.err_rate")
    eng = eng or store.engine()
    store.set_preference(user_id, RATE_PREFERENCE, str(parsed), eng=eng)
    _forget(eng, user_id)
    return parsed


def user_price(user_id: str, endpoint: str, model: str, *,
               eng: Engine | None = None) -> Price | None:
    """The price the user set for this model on this endpoint, else on any endpoint ("*")."""
    prices, _rate = _user_prices(user_id, eng or store.engine())
    return prices.get((endpoint, model)) or prices.get(("*", model))


def set_user_price(user_id: str, endpoint: str, model: str, price: Price, *,
                   eng: Engine | None = None) -> None:
    """Set (or replace) the user's price for a model; "*" as endpoint means any endpoint."""
    if price.currency not in CURRENCIES:
        raise PriceError("prices.err_currency", value=price.currency[:10])
    eng = eng or store.engine()
    p = store.prices
    with eng.begin() as conn:
        conn.execute(p.delete().where(p.c.user_id == user_id, p.c.endpoint == endpoint,
                                      p.c.model == model))
        conn.execute(p.insert().values(user_id=user_id, endpoint=endpoint, model=model,
                                       input_per_mtok=price.input, output_per_mtok=price.output,
                                       cached_input_per_mtok=price.cached_input,
                                       currency=price.currency))
    _forget(eng, user_id)


def delete_user_price(user_id: str, endpoint: str, model: str, *,
                      eng: Engine | None = None) -> None:
    """Forget the user's price for a model (the catalog or free rule applies again)."""
    eng = eng or store.engine()
    p = store.prices
    with eng.begin() as conn:
        conn.execute(p.delete().where(p.c.user_id == user_id, p.c.endpoint == endpoint,
                                      p.c.model == model))
    _forget(eng, user_id)


def _catalog(endpoint: Endpoint, model: str, usage: genai_prices.Usage,
             at: datetime | None) -> Any:
    try:
        # The endpoint's URL names the vendor (api.deepseek.com, open.bigmodel.cn, ...).
        return genai_prices.calc_price(usage, model, provider_api_url=endpoint.base_url,
                                       genai_request_timestamp=at)
    except LookupError:
        if endpoint.preset != "custom":
            return None
        try:  # a gateway in front of a known vendor: match by model name alone
            return genai_prices.calc_price(usage, model, genai_request_timestamp=at)
        except LookupError:
            return None


def catalog_cost(endpoint: Endpoint, model: str, usage: Usage, at: datetime) -> Decimal | None:
    """The cost by genai-prices' catalog at the call's time, or None when it does not know."""
    priced = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=min(usage.cached_input_tokens, usage.input_tokens),
        output_tokens=usage.output_tokens,
    )
    result = _catalog(endpoint, model, priced, at)
    return None if result is None else Decimal(result.total_price)


def catalog_price(endpoint: Endpoint, model: str, at: datetime | None = None) -> Price | None:
    """The catalog's price per million tokens for display, or None (unknown or tiered)."""
    result = _catalog(endpoint, model, genai_prices.Usage(input_tokens=1), at)
    if result is None:
        return None
    mp = result.model_price

    def number(value: Any) -> Decimal | None:
        return Decimal(str(value)) if isinstance(value, int | float | Decimal) else None

    input_rate, output_rate = number(mp.input_mtok), number(mp.output_mtok)
    if input_rate is None or output_rate is None:
        return None
    return Price(input_rate, output_rate, number(mp.cache_read_mtok))


# Names a home or office network gives its machines; a bare name ("gpu-box") is one too.
_PRIVATE_SUFFIXES = (".local", ".lan", ".home", ".internal", ".localdomain", ".home.arpa")


def is_private(endpoint: Endpoint) -> bool:
    """Ollama, or a server on this machine or a private network, by address or by host name."""
    if endpoint.is_local:
        return True
    host = (urlparse(endpoint.base_url).hostname or "").lower()
    return bool(host) and ("." not in host or host.endswith(_PRIVATE_SUFFIXES))


def pricing_mode(endpoint: Endpoint) -> str:
    """How an endpoint's calls are priced: its own setting, auto when unset or unknown."""
    return endpoint.pricing if endpoint.pricing in PRICING_MODES else "auto"


def price_in_force(endpoint: Endpoint, model: str, *, user_id: str, at: datetime | None = None,
                   eng: Engine | None = None) -> tuple[Price | None, Source]:
    """The price a new call of this model would be charged at, and where it comes from."""
    mode = pricing_mode(endpoint)
    if mode == "free":
        return Price(Decimal(0), Decimal(0)), "free"
    if mode in ("auto", "own"):
        mine = user_price(user_id, endpoint.name, model, eng=eng)
        if mine is not None:
            return mine, "yours"
        if mode == "own":
            return None, "none"
        if endpoint.kind == "ollama":
            return Price(Decimal(0), Decimal(0)), "free"
    listed = catalog_price(endpoint, model, at)
    if listed is not None:
        return listed, "catalog"
    if mode == "auto" and is_private(endpoint):
        return Price(Decimal(0), Decimal(0)), "free"
    return None, "none"


def cost(endpoint: Endpoint, model: str, usage: Usage, at: datetime, *, user_id: str,
         eng: Engine | None = None) -> Decimal | None:
    """What the call cost in USD, by the endpoint's pricing mode (see the module's docstring).

    None means unknown, which is not the same as free.
    """
    mode = pricing_mode(endpoint)
    if mode == "free":
        return Decimal(0)
    if mode in ("auto", "own"):
        prices, rate = _user_prices(user_id, eng or store.engine())
        mine = prices.get((endpoint.name, model)) or prices.get(("*", model))
        if mine is not None:
            return mine.cost_usd(usage, rate)
        if mode == "own":
            return None
        if endpoint.kind == "ollama":
            return Decimal(0)
    found = catalog_cost(endpoint, model, usage, at)
    if found is None and mode == "auto" and is_private(endpoint):
        return Decimal(0)
    return found


def endpoint_from_log(name: str, kind: str, base_url: str,
                      configured: dict[str, Endpoint]) -> Endpoint:
    """The endpoint a logged call used: the configured one of that name, else one from the row."""
    known = configured.get(name)
    if known is not None:
        return known
    kind_: Kind = kind if kind in ("openai", "azure", "ollama") else "openai"  # type: ignore[assignment]
    preset = "ollama" if kind_ == "ollama" else "azure" if kind_ == "azure" \
        else preset_for_url(base_url).id
    return Endpoint(name, kind_, base_url, preset=preset, source="log")


def reprice(user_id: str, endpoint: str, model: str, price: Price, *,
            eng: Engine | None = None) -> int:
    """Re-price this user's past calls of a model at a price, on request; how many rows changed.

    One UPDATE in the database: the tokens are on the rows, so a million calls take a moment,
    not a million round trips. `endpoint` "*" means every endpoint.
    """
    eng = eng or store.engine()
    rate = Decimal(1) if price.currency == "USD" else cny_per_usd(user_id, eng=eng)
    c = store.calls.c
    cached = case((c.cached_input_tokens < c.input_tokens, c.cached_input_tokens),
                  else_=c.input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    money = ((c.input_tokens - cached) * literal(price.input) + cached * literal(cached_rate)
             + c.output_tokens * literal(price.output)) / literal(MILLION * rate)
    where = [c.user_id == user_id, c.model == model]
    if endpoint != "*":
        where.append(c.endpoint == endpoint)
    with eng.begin() as conn:
        result = conn.execute(store.calls.update().where(and_(*where)).values(cost_usd=money))
        store.forget_rollup(conn, user_id)  # its hourly sums hold the old costs
    return result.rowcount
