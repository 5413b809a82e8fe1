"""The one way money is shown: in the viewer's currency, with the digits that tell calls apart.

The call log keeps US dollars; a viewer sees them in the currency they chose (USD or CNY, at
the deployment's rate). Amounts of a unit or more show cents; smaller ones show two
significant digits ($0.000038, not $0.000 or $0.000000), so a cheap call is never shown as
free. A cost of exactly 0 reads "free", an unknown one "unknown": never a made-up 0.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Engine

from core import budget, pricing, store
from core.i18n import t

SYMBOLS = {"USD": "$", "CNY": "¥"}
PREFERENCE = "currency"
SIGNIFICANT = 2  # digits kept below one unit


@dataclass(frozen=True)
class View:
    """How money is shown to one viewer: their currency and the rate from dollars to it."""

    currency: str = "USD"
    cny_per_usd: Decimal = pricing.DEFAULT_CNY_PER_USD

    def from_usd(self, usd: Any) -> Decimal:
        """A dollar amount in this view's currency."""
        amount = _decimal(usd)
        return amount * self.cny_per_usd if self.currency == "CNY" else amount


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def number(value: Any) -> str:
    """A non-negative amount's digits: cents from one unit up (1,234.50), two significant
    digits below (0.50, 0.0034, 0.000038), 0 as 0."""
    amount = _decimal(value)
    if amount == 0:
        return "0"
    if abs(amount) >= 1:
        return f"{amount.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"
    places = max(2, SIGNIFICANT - 1 - amount.adjusted())
    rounded = amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    if abs(rounded) >= 1:
        return "1.00" if rounded > 0 else "-1.00"
    text = f"{rounded:.{places}f}"
    whole, _, decimals = text.partition(".")
    decimals = decimals.rstrip("0").ljust(2, "0")  # 0.0010 -> 0.001, 0.5 -> 0.50
    return f"{whole}.{decimals}"


def amount(value: Any, currency: str) -> str:
    """An amount of money in a currency, such as a budget or a month's spend ($0, ¥1,000.00)."""
    symbol = SYMBOLS.get(currency)
    digits = number(value)
    return f"{symbol}{digits}" if symbol else f"{digits} {currency}"


def cost(usd: Any, view: View | None = None, *, partial: bool = False) -> str:
    """What a call (or a sum of calls) cost, in the view's currency: "free" for exactly 0,
    "unknown" for None; `partial` marks a sum that leaves unpriced calls out ("$0.0012+")."""
    if usd is None or (isinstance(usd, float) and usd != usd):
        return t("money.unknown")
    value = _decimal(usd)
    if value == 0 and not partial:
        return t("money.free")
    view = view or View()
    return amount(view.from_usd(value), view.currency) + ("+" if partial else "")


# A viewer's currency, read at most once per TTL per user (it is drawn on every message); the
# rate comes from core.pricing's own cache, cleared whenever it is set.
VIEW_TTL_S = 30.0
_views: dict[tuple[str, str], tuple[float, str]] = {}
_lock = threading.Lock()


def view(user_id: str, *, eng: Engine | None = None) -> View:
    """The viewer's chosen currency (else the deployment budget's, else USD) and the rate."""
    eng = eng or store.engine()
    key, now = (str(eng.url), user_id), time.monotonic()
    with _lock:
        cached = _views.get(key)
    if cached is not None and now - cached[0] < VIEW_TTL_S:
        return View(cached[1], pricing.cny_per_usd(eng=eng))
    chosen = store.get_preference(user_id, PREFERENCE, None, eng=eng)
    if chosen not in pricing.CURRENCIES:
        found = budget.get_budget(eng=eng)
        chosen = found.currency if found is not None else "USD"
    with _lock:
        _views[key] = (now, chosen)
    return View(chosen, pricing.cny_per_usd(eng=eng))


def set_currency(user_id: str, currency: str, *, eng: Engine | None = None) -> None:
    """Keep the currency a viewer wants money shown in."""
    if currency not in pricing.CURRENCIES:
        raise pricing.PriceError("prices.err_currency", value=str(currency)[:10])
    eng = eng or store.engine()
    store.set_preference(user_id, PREFERENCE, currency, eng=eng)
    forget(eng)


def forget(eng: Engine | None = None) -> None:
    """Drop the remembered views (a currency, rate or budget changed)."""
    with _lock:
        if eng is None:
            _views.clear()
        else:
            for key in [k for k in _views if k[0] == str(eng.url)]:
                _views.pop(key)
