"""What a call cost, in US dollars: the deployment's prices, then genai-prices, then the repo's
dated vendor table (core/data/vendor_prices.toml), else unknown; decided per endpoint.

Prices, the CNY rate and endpoints' pricing modes belong to the deployment (one bill). An
endpoint's mode chooses: "free" (always 0), "priced" (never taken for free: a price from the
table, else unknown), "catalog" (genai-prices and the vendor table only), "own" (the
deployment's prices only), or "auto": the deployment's price, else 0 for Ollama, else the
catalogs', else 0 for a server on this machine or a private network whose model they do not
know. So a private gateway (one-api, LiteLLM) forwarding to gpt-4o is priced like gpt-4o
whatever its address, and a local vLLM serving its own model costs nothing.

One concern, kept whole (~530 lines): the order in which a price is found is read in one file.
"""

from __future__ import annotations

import functools
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import genai_prices
from sqlalchemy import Engine, and_, bindparam, case, literal, select

from core import store
from core.config import Endpoint, Kind, preset_for_url
from core.providers.base import ErrorKind, ProviderError, Usage

MILLION = Decimal(1_000_000)
CURRENCIES = ("USD", "CNY")
PRICING_MODES = ("auto", "free", "priced", "catalog", "own")
# What Settings offers for an endpoint; "catalog" and "own" stay for secrets files.
SETTINGS_MODES = ("auto", "free", "priced")
# Per million tokens. The dearest model listed anywhere is well under this; a larger number
# is a typo (a price per token typed as per million, a stray digit), refused with a sentence.
MAX_PRICE_PER_MTOK = Decimal(10_000)
# Yuan per US dollar until the deployment sets its own (its bank's rate, its invoice's).
DEFAULT_CNY_PER_USD = Decimal("7.1")
RATE_SETTING = "cny_per_usd"
VENDOR_FILE = Path(__file__).parent / "data" / "vendor_prices.toml"
Source = Literal["yours", "catalog", "vendor", "free", "none"]


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

    @property
    def free(self) -> bool:
        """Whether no token costs anything at this price."""
        return self.input == 0 and self.output == 0 and not self.cached_input

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


def parse_amount(value: Any, *, field: str, row: str = "", allow_empty: bool = False,
                 limit: Decimal = MAX_PRICE_PER_MTOK, huge_key: str = "prices.err_huge",
                 **context: Any) -> Decimal | None:
    """An amount typed by a user, checked: a number, not negative, not above `limit`.

    Numbers from a numeric input are taken as they are. Text is parsed with a dot for decimals:
    a comma is refused (is `1,500` fifteen hundred or one and a half?) with a sentence that
    names the row and column, so what is saved is what the user meant. `-0` is 0.
    """
    where = {"field": field, "row": row, **context}
    if value is None or (isinstance(value, str) and not value.strip()) or (
            isinstance(value, float) and value != value):  # NaN is how an emptied cell reads
        if allow_empty:
            return None
        raise PriceError("prices.err_missing", **where)
    if isinstance(value, bool):
        raise PriceError("prices.err_number", value=str(value), **where)
    text = str(value).strip()
    if isinstance(value, str) and "," in text:
        raise PriceError("prices.err_comma", value=text[:40], **where)
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        raise PriceError("prices.err_number", value=text[:40], **where) from None
    if not amount.is_finite():
        raise PriceError("prices.err_number", value=text[:40], **where)
    if amount == 0:
        return Decimal(0)  # "-0" and "0.00" alike: saved, and shown, as 0
    if amount < 0:
        raise PriceError("prices.err_negative", **where)
    if amount > limit:
        raise PriceError(huge_key, limit=f"{limit:,}", **where)
    return amount


def parse_price(input: Any, cached_input: Any, output: Any, currency: Any = "USD", *,
                row: str = "") -> Price:
    """A Price from what a user typed in the prices table; PriceError says what is wrong."""
    if currency not in CURRENCIES:
        raise PriceError("prices.err_currency", value=str(currency)[:10], row=row)
    parsed_input = parse_amount(input, field="input", row=row)
    parsed_output = parse_amount(output, field="output", row=row)
    assert parsed_input is not None and parsed_output is not None
    return Price(parsed_input, parsed_output,
                 parse_amount(cached_input, field="cached", row=row, allow_empty=True),
                 currency)


# -- the deployment's prices, rate and pricing modes -------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What the deployment set: its prices by (endpoint, model), its rate, endpoints' modes."""

    prices: dict[tuple[str, str], Price] = field(default_factory=dict)
    rate: Decimal = DEFAULT_CNY_PER_USD
    modes: dict[str, str] = field(default_factory=dict)

    def price(self, endpoint: str, model: str) -> Price | None:
        """The price set for this model on this endpoint, else on any endpoint ("*")."""
        return self.prices.get((endpoint, model)) or self.prices.get(("*", model))


# Read once a minute rather than once per call: the lookup sits at the end of every stream.
# Setting anything here clears it at once; another process sees it within TTL.
PRICES_TTL_S = 60.0
_cache: dict[str, tuple[float, Deployment]] = {}
_cache_lock = threading.Lock()


def deployment(*, eng: Engine | None = None) -> Deployment:
    """The deployment's prices, rate and pricing modes (cached for PRICES_TTL_S)."""
    eng = eng or store.engine()
    key, now = str(eng.url), time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and now - cached[0] < PRICES_TTL_S:
        return cached[1]
    p, s, m = store.prices.c, store.settings.c, store.endpoint_pricing.c
    with eng.connect() as conn:
        prices = {
            (r.endpoint, r.model): Price(
                Decimal(r.input_per_mtok), Decimal(r.output_per_mtok),
                None if r.cached_input_per_mtok is None else Decimal(r.cached_input_per_mtok),
                r.currency or "USD")
            for r in conn.execute(select(p.endpoint, p.model, p.input_per_mtok,
                                         p.output_per_mtok, p.cached_input_per_mtok,
                                         p.currency))
        }
        raw_rate = conn.execute(select(s.value).where(s.name == RATE_SETTING)).scalar()
        modes = {r.endpoint: r.mode for r in conn.execute(select(m.endpoint, m.mode))}
    found = Deployment(prices, _rate(raw_rate), modes)
    with _cache_lock:
        _cache[key] = (now, found)
    return found


def last_known(*, eng: Engine | None = None, url: str | None = None) -> Deployment:
    """What was last read of the deployment on the database at `url` (or `eng`'s), however
    old (else nothing set): for decisions that must be taken while it cannot be read."""
    with _cache_lock:
        cached = _cache.get(url or str((eng or store.engine()).url))
    return cached[1] if cached is not None else Deployment()


def _rate(raw: Any) -> Decimal:
    try:
        rate = Decimal(str(raw)) if raw is not None else DEFAULT_CNY_PER_USD
    except InvalidOperation:
        return DEFAULT_CNY_PER_USD
    return rate if rate.is_finite() and rate > 0 else DEFAULT_CNY_PER_USD


def _forget(eng: Engine) -> None:
    with _cache_lock:
        _cache.pop(str(eng.url), None)


def cny_per_usd(*, eng: Engine | None = None) -> Decimal:
    """The deployment's conversion rate (yuan per dollar), else the default."""
    return deployment(eng=eng).rate


def set_cny_per_usd(rate: Any, *, eng: Engine | None = None) -> Decimal:
    """Keep the deployment's conversion rate; a zero, negative or non-numeric rate is refused."""
    parsed = parse_amount(rate, field="rate")
    if parsed is None or parsed == 0:
        raise PriceError("prices.err_rate")
    eng = eng or store.engine()
    _upsert(eng, store.settings, {"name": RATE_SETTING, "value": str(parsed)}, "name")
    _forget(eng)
    return parsed


def _upsert(eng: Engine, table: Any, values: dict[str, Any], key: str) -> None:
    if eng.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={k: stmt.excluded[k] for k in values if k != key})
    store.retry_locked(lambda: _run(eng, stmt))


def _run(eng: Engine, stmt: Any) -> None:
    with eng.begin() as conn:
        conn.execute(stmt)


def own_price(endpoint: str, model: str, *, eng: Engine | None = None) -> Price | None:
    """The deployment's price for this model on this endpoint, else on any endpoint ("*")."""
    return deployment(eng=eng).price(endpoint, model)


def set_price(endpoint: str, model: str, price: Price, *, eng: Engine | None = None) -> None:
    """Set (or replace) the deployment's price for a model; "*" as endpoint means any."""
    if price.currency not in CURRENCIES:
        raise PriceError("prices.err_currency", value=price.currency[:10])
    eng = eng or store.engine()
    p = store.prices
    with eng.begin() as conn:
        conn.execute(p.delete().where(p.c.endpoint == endpoint, p.c.model == model))
        conn.execute(p.insert().values(endpoint=endpoint, model=model,
                                       input_per_mtok=price.input, output_per_mtok=price.output,
                                       cached_input_per_mtok=price.cached_input,
                                       currency=price.currency))
    _forget(eng)


def delete_price(endpoint: str, model: str, *, eng: Engine | None = None) -> None:
    """Forget the deployment's price for a model (the catalogs or the free rule apply again)."""
    eng = eng or store.engine()
    p = store.prices
    with eng.begin() as conn:
        conn.execute(p.delete().where(p.c.endpoint == endpoint, p.c.model == model))
    _forget(eng)


def pricing_mode(endpoint: Endpoint, *, eng: Engine | None = None,
                 known: Deployment | None = None) -> str:
    """How an endpoint's calls are priced: a secrets endpoint's own setting, else the one set
    in Settings, else the endpoint's (auto); an unknown mode reads as auto."""
    mode = endpoint.pricing
    if endpoint.source != "secrets":
        mode = (known or deployment(eng=eng)).modes.get(endpoint.name, mode)
    return mode if mode in PRICING_MODES else "auto"


def set_pricing_mode(endpoint: Endpoint, mode: str, *, eng: Engine | None = None) -> None:
    """Keep how an endpoint's calls are priced (a secrets endpoint keeps its file's setting)."""
    if mode not in PRICING_MODES:
        raise PriceError("prices.err_mode", value=str(mode)[:20])
    if endpoint.source == "secrets":
        raise PriceError("prices.err_mode_secrets", name=endpoint.name)
    eng = eng or store.engine()
    _upsert(eng, store.endpoint_pricing, {"endpoint": endpoint.name, "mode": mode}, "endpoint")
    _forget(eng)


# -- the catalogs: genai-prices, then the repo's vendor table ----------------------------------


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


# The catalog's price of a model now, kept a minute: the hard stop asks it before every call.
_listed: dict[tuple[str, str, str], tuple[float, Price | None]] = {}


def catalog_price(endpoint: Endpoint, model: str, at: datetime | None = None) -> Price | None:
    """The catalog's price per million tokens for display, or None (unknown or tiered)."""
    if at is None:
        key, now = (endpoint.base_url, endpoint.preset, model), time.monotonic()
        cached = _listed.get(key)
        if cached is None or now - cached[0] >= PRICES_TTL_S:
            cached = _listed[key] = (now, catalog_price(endpoint, model, datetime.now(UTC)))
        return cached[1]
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


@dataclass(frozen=True)
class VendorPrice:
    """A vendor's published price from the repo's table, with the page and when it was read."""

    vendor: str  # a preset id (core.config.PRESETS)
    model: str
    price: Price
    source: str
    read: str
    note: str = ""


@functools.cache
def vendor_table() -> tuple[VendorPrice, ...]:
    """Every entry of core/data/vendor_prices.toml."""
    data = tomllib.loads(VENDOR_FILE.read_text(encoding="utf-8"))
    found = []
    for e in data.get("price", []):
        cached = e.get("cached_input")
        price = Price(Decimal(e["input"]), Decimal(e["output"]),
                      None if cached is None else Decimal(cached), e["currency"])
        found.append(VendorPrice(e["vendor"], e["model"], price, e["source"], e["read"],
                                 e.get("note", "")))
    return tuple(found)


def vendor_price(endpoint: Endpoint, model: str) -> VendorPrice | None:
    """The vendor table's entry for this model on the endpoint's vendor (a gateway of the
    custom preset: by model name alone), or None."""
    vendor = endpoint.preset if endpoint.preset != "custom" else None
    for entry in vendor_table():
        if entry.model == model and (vendor is None or entry.vendor == vendor):
            return entry
    return None


# -- the price in force and a call's cost ------------------------------------------------------


# Names a home or office network gives its machines; a bare name ("gpu-box") is one too.
_PRIVATE_SUFFIXES = (".local", ".lan", ".home", ".internal", ".localdomain", ".home.arpa")


def is_private(endpoint: Endpoint) -> bool:
    """Ollama, or a server on this machine or a private network, by address or by host name."""
    if endpoint.is_local:
        return True
    host = (urlparse(endpoint.base_url).hostname or "").lower()
    return bool(host) and ("." not in host or host.endswith(_PRIVATE_SUFFIXES))


FREE = Price(Decimal(0), Decimal(0))


def price_in_force(endpoint: Endpoint, model: str, *, at: datetime | None = None,
                   eng: Engine | None = None,
                   known: Deployment | None = None) -> tuple[Price | None, Source]:
    """The price a new call of this model would be charged at, and where it comes from
    (`known`: the deployment's settings to use instead of reading them)."""
    known = known or deployment(eng=eng)
    mode = pricing_mode(endpoint, known=known)
    if mode == "free":
        return FREE, "free"
    if mode in ("auto", "own", "priced"):
        mine = known.price(endpoint.name, model)
        if mine is not None:
            return mine, "yours"
        if mode == "own":
            return None, "none"
        if mode == "auto" and endpoint.kind == "ollama":
            return FREE, "free"
    listed = catalog_price(endpoint, model, at)
    if listed is not None:
        return listed, "catalog"
    vendor = vendor_price(endpoint, model)
    if vendor is not None:
        return vendor.price, "vendor"
    if mode == "auto" and is_private(endpoint):
        return FREE, "free"
    return None, "none"


def cost(endpoint: Endpoint, model: str, usage: Usage, at: datetime, *,
         eng: Engine | None = None) -> Decimal | None:
    """What the call cost in USD, by the endpoint's pricing mode (see the module's docstring).

    None means unknown, which is not the same as free.
    """
    known = deployment(eng=eng)
    mode = pricing_mode(endpoint, known=known)
    if mode == "free":
        return Decimal(0)
    if mode in ("auto", "own", "priced"):
        mine = known.price(endpoint.name, model)
        if mine is not None:
            return mine.cost_usd(usage, known.rate)
        if mode == "own":
            return None
        if mode == "auto" and endpoint.kind == "ollama":
            return Decimal(0)
    found = catalog_cost(endpoint, model, usage, at)
    if found is None:
        vendor = vendor_price(endpoint, model)
        if vendor is not None:
            found = vendor.price.cost_usd(usage, known.rate)
    if found is None and mode == "auto" and is_private(endpoint):
        return Decimal(0)
    return found


# A request refused before the model read it: no token was processed, so nothing is billed.
_REFUSED_KINDS = (ErrorKind.CONNECTION, ErrorKind.AUTH, ErrorKind.MODEL_NOT_FOUND,
                  ErrorKind.RATE_LIMITED)


def never_reached(error: ProviderError | None, server_usage: Usage | None,
                  answered: bool) -> bool:
    """Whether a failed call never reached the model: the connection failed (refused, DNS, TLS)
    or the server refused the request (a 4xx: 401, 403, 404, 429...) before any output, and
    the server reported no usage. Such a call costs 0."""
    if error is None or server_usage is not None or answered:
        return False
    status = error.http_status
    return error.kind in _REFUSED_KINDS or (status is not None and 400 <= status < 500)


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


def price_logged(conn: Any, rows: list[Any], configured: dict[str, Endpoint], *,
                 eng: Engine | None = None) -> int:
    """Price rows of the call log with the tokens they hold (estimated, flagged), as a stopped
    call is priced: used for calls interrupted by their process's death. `rows` carry id,
    endpoint, provider, base_url, model, server_model, started_at and the token counts; a row
    whose price is unknown keeps NULL. Returns how many rows got a cost."""
    c = store.calls.c
    priced = []
    for r in rows:
        endpoint = endpoint_from_log(r.endpoint, r.provider, r.base_url, configured)
        usage = Usage(r.input_tokens or 0, r.cached_input_tokens or 0, r.output_tokens or 0,
                      r.reasoning_tokens or 0, estimated=True)
        found = cost(endpoint, r.model, usage, r.started_at, eng=eng)
        if found is None and r.server_model and r.server_model != r.model:
            found = cost(endpoint, r.server_model, usage, r.started_at, eng=eng)
        if found is not None:
            priced.append({"row_id": r.id, "money": found})
    if priced:
        conn.execute(store.calls.update().where(c.id == bindparam("row_id"))
                     .values(cost_usd=bindparam("money")), priced)
    return len(priced)


def reprice(endpoint: str, model: str, price: Price, *, eng: Engine | None = None) -> int:
    """Re-price past calls of a model at a price, on request (every user's: one bill); how many
    rows changed.

    One UPDATE in the database: the tokens are on the rows, so a million calls take a moment,
    not a million round trips. `endpoint` "*" means every endpoint.
    """
    eng = eng or store.engine()
    rate = Decimal(1) if price.currency == "USD" else cny_per_usd(eng=eng)
    c = store.calls.c
    cached = case((c.cached_input_tokens < c.input_tokens, c.cached_input_tokens),
                  else_=c.input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    money = ((c.input_tokens - cached) * literal(price.input) + cached * literal(cached_rate)
             + c.output_tokens * literal(price.output)) / literal(MILLION * rate)
    where = [c.model == model]
    if endpoint != "*":
        where.append(c.endpoint == endpoint)
    with eng.begin() as conn:
        users = conn.execute(select(c.user_id).where(*where).distinct()).scalars().all()
        result = conn.execute(store.calls.update().where(and_(*where)).values(cost_usd=money))
        for user in users:
            store.forget_rollup(conn, user)  # their hourly sums hold the old costs
    return result.rowcount
