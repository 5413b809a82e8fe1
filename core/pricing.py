"""What a call cost: the user's own price first, then genai-prices at the call's time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import genai_prices
from sqlalchemy import Engine, select

from core import store
from core.config import Endpoint
from core.providers.base import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        """The money this usage costs at this price."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        )
        return total / MILLION


# The user's prices, read once a minute rather than once per call: the lookup sits at the end
# of every stream. Setting a price here clears it at once; another process sees it within TTL.
PRICES_TTL_S = 60.0
_price_cache: dict[tuple[str, str], tuple[float, dict[tuple[str, str], Price]]] = {}
_price_lock = threading.Lock()


def _user_prices(user_id: str, eng: Engine) -> dict[tuple[str, str], Price]:
    key = (str(eng.url), user_id)
    now = time.monotonic()
    with _price_lock:
        cached = _price_cache.get(key)
    if cached is not None and now - cached[0] < PRICES_TTL_S:
        return cached[1]
    p = store.prices.c
    query = select(p.endpoint, p.model, p.input_per_mtok, p.output_per_mtok,
                   p.cached_input_per_mtok).where(p.user_id == user_id)
    with eng.connect() as conn:
        found = {
            (r.endpoint, r.model): Price(
                Decimal(r.input_per_mtok), Decimal(r.output_per_mtok),
                None if r.cached_input_per_mtok is None else Decimal(r.cached_input_per_mtok))
            for r in conn.execute(query)
        }
    with _price_lock:
        _price_cache[key] = (now, found)
    return found


def user_price(user_id: str, endpoint: str, model: str, *,
               eng: Engine | None = None) -> Price | None:
    """The price the user set for this model on this endpoint, else on any endpoint ("*")."""
    prices = _user_prices(user_id, eng or store.engine())
    return prices.get((endpoint, model)) or prices.get(("*", model))


def set_user_price(user_id: str, endpoint: str, model: str, price: Price, *,
                   eng: Engine | None = None) -> None:
    """Set (or replace) the user's price for a model; "*" as endpoint means any endpoint."""
    eng = eng or store.engine()
    p = store.prices
    with eng.begin() as conn:
        conn.execute(p.delete().where(p.c.user_id == user_id, p.c.endpoint == endpoint,
                                      p.c.model == model))
        conn.execute(p.insert().values(user_id=user_id, endpoint=endpoint, model=model,
                                       input_per_mtok=price.input, output_per_mtok=price.output,
                                       cached_input_per_mtok=price.cached_input))
    with _price_lock:
        _price_cache.pop((str(eng.url), user_id), None)


def catalog_cost(endpoint: Endpoint, model: str, usage: Usage, at: datetime) -> Decimal | None:
    """The cost by genai-prices' catalog at the call's time, or None when it does not know."""
    priced = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=min(usage.cached_input_tokens, usage.input_tokens),
        output_tokens=usage.output_tokens,
    )
    try:
        # The endpoint's URL names the vendor (api.deepseek.com, open.bigmodel.cn, ...).
        result = genai_prices.calc_price(priced, model, provider_api_url=endpoint.base_url,
                                         genai_request_timestamp=at)
    except LookupError:
        if endpoint.preset != "custom":
            return None
        try:  # a proxy in front of a known vendor: match by model name alone
            result = genai_prices.calc_price(priced, model, genai_request_timestamp=at)
        except LookupError:
            return None
    return Decimal(result.total_price)


def cost(endpoint: Endpoint, model: str, usage: Usage, at: datetime, *, user_id: str,
         eng: Engine | None = None) -> Decimal | None:
    """What the call cost in USD: user's price, else 0 for local servers, else the catalog's.

    None means unknown, which is not the same as free.
    """
    price = user_price(user_id, endpoint.name, model, eng=eng)
    if price is not None:
        return price.cost(usage)
    if endpoint.is_local:
        return Decimal(0)
    return catalog_cost(endpoint, model, usage, at)
