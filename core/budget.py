"""A monthly budget in USD or CNY, kept in `preferences`, and the hard stop at 100%.

`enforce()` is what the metered path calls before a request goes out. It remembers the last
budget it read per database and user, so with a hard stop set and the database unreachable,
new calls are refused rather than let through unmetered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select

from core import pricing, store

PREFERENCE = "budget"
WARN_AT = Decimal("0.8")


class BudgetExceeded(RuntimeError):
    """The month's spend reached a budget with a hard stop: the call is refused."""

    def __init__(self, spent: Decimal, budget: Budget) -> None:
        super().__init__(f"monthly budget reached: {spent:.2f} of {budget.amount} "
                         f"{budget.currency}")
        self.key = "budget.exceeded"
        self.spent, self.budget = spent, budget


class BudgetUnavailable(RuntimeError):
    """A hard stop is set but the spend cannot be read (database unreachable): refused."""

    def __init__(self) -> None:
        super().__init__("budget hard stop set and the call log cannot be read")
        self.key = "budget.unavailable"


@dataclass(frozen=True)
class Budget:
    """A monthly spending limit; `hard_stop` refuses calls once it is reached."""

    amount: Decimal
    currency: str = "USD"
    hard_stop: bool = False


@dataclass(frozen=True)
class Status:
    """This month's spend against the budget, in the budget's currency."""

    budget: Budget
    spent: Decimal

    @property
    def fraction(self) -> Decimal:
        """Spent over budget (0 when the budget is 0 and nothing is spent)."""
        if self.budget.amount == 0:
            return Decimal(1) if self.spent > 0 else Decimal(0)
        return self.spent / self.budget.amount

    @property
    def level(self) -> str | None:
        """None below 80%, "warn" from 80%, "over" from 100%."""
        if self.fraction >= 1:
            return "over"
        return "warn" if self.fraction >= WARN_AT else None


_known: dict[tuple[str, str], Budget | None] = {}
_lock = threading.Lock()


def get_budget(user_id: str, *, eng: Engine | None = None) -> Budget | None:
    """The user's budget, or None."""
    eng = eng or store.engine()
    raw: Any = store.get_preference(user_id, PREFERENCE, None, eng=eng)
    budget = None
    if isinstance(raw, dict) and raw.get("amount") is not None:
        budget = Budget(Decimal(str(raw["amount"])), str(raw.get("currency") or "USD"),
                        bool(raw.get("hard_stop")))
    with _lock:
        _known[(str(eng.url), user_id)] = budget
    return budget


def set_budget(user_id: str, amount: Any, currency: str = "USD", hard_stop: bool = False, *,
               eng: Engine | None = None) -> Budget | None:
    """Keep (or, with an empty amount, clear) the user's budget; bad amounts raise PriceError."""
    eng = eng or store.engine()
    parsed = pricing.parse_amount(amount, field="budget", allow_empty=True)
    if currency not in pricing.CURRENCIES:
        raise pricing.PriceError("prices.err_currency", value=str(currency)[:10])
    value = None if parsed is None else {"amount": str(parsed), "currency": currency,
                                         "hard_stop": bool(hard_stop)}
    store.set_preference(user_id, PREFERENCE, value, eng=eng)
    return get_budget(user_id, eng=eng)


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of this month, UTC (the budget's month is the UTC month)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def status(user_id: str, *, eng: Engine | None = None,
           now: datetime | None = None) -> Status | None:
    """This month's spend against the user's budget, or None without a budget."""
    eng = eng or store.engine()
    budget = get_budget(user_id, eng=eng)
    if budget is None:
        return None
    c = store.calls.c
    query = select(func.sum(c.cost_usd)).where(c.user_id == user_id,
                                               c.started_at >= month_start(now))
    with eng.connect() as conn:
        spent_usd = Decimal(str(conn.execute(query).scalar() or 0))
    if budget.currency == "CNY":
        spent = spent_usd * pricing.cny_per_usd(user_id, eng=eng)
    else:
        spent = spent_usd
    return Status(budget, spent)


def enforce(user_id: str, *, eng: Engine | None = None) -> None:
    """Refuse a new call when the hard stop is reached, or cannot be checked.

    Raises BudgetExceeded at 100% with a hard stop; BudgetUnavailable when the database cannot
    be read and the last budget seen for this user had a hard stop. Otherwise returns.
    """
    eng = eng or store.engine()
    try:
        found = status(user_id, eng=eng)
    except Exception as exc:  # noqa: BLE001 - any database failure means "cannot check"
        unchecked(user_id, url=str(eng.url), cause=exc)
        return
    if found is not None and found.budget.hard_stop and found.level == "over":
        raise BudgetExceeded(found.spent, found.budget)


def unchecked(user_id: str, *, url: str, cause: BaseException | None = None) -> None:
    """The spend could not be read (a database error, or no answer before the metered path's
    deadline): raises BudgetUnavailable when the last budget seen for this user on the
    database at `url` had a hard stop (fail closed); otherwise returns."""
    with _lock:
        last = _known.get((url, user_id))
    if last is not None and last.hard_stop:
        raise BudgetUnavailable() from cause
