"""Monthly budgets and the hard stop: the deployment's (the owner's cap on the one bill) and
optional per-person caps, in USD or CNY, kept in the `budgets` table.

`enforce()` is what the metered path calls before a request goes out; it checks both budgets.
With a hard stop set, a call that can cost money is refused when a budget is spent, when its
model has no price (an unpriced call would pass any limit unseen), or when the spend cannot
be read (the last budgets read per database are remembered, so an unreachable database fails
closed). A call that cannot cost money (a free endpoint such as a local Ollama) is never
refused by it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from core import pricing, store
from core.config import Endpoint

DEPLOYMENT = store.DEPLOYMENT
WARN_AT = Decimal("0.8")
# A budget's own bounds (not a price's): 0 allows free models only; above this is a typo.
MAX_BUDGET = Decimal(10_000_000)


class Refused(RuntimeError):
    """A call the hard stop refuses; `hint` names the sentence for the user, `context` fills
    it."""

    hint = "error.budget"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.context = context


class BudgetExceeded(Refused):
    """The month's spend reached a budget with a hard stop."""

    hint = "error.budget"

    def __init__(self, spent: Decimal, budget: Budget) -> None:
        super().__init__(f"monthly budget reached: {spent} of {budget.amount} {budget.currency}")
        self.spent, self.budget = spent, budget


class BudgetUnpriced(Refused):
    """A hard stop is set and the model has no price, so its spend could not be counted."""

    hint = "error.budget_unpriced"

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        super().__init__(f"hard stop set and {model} on {endpoint.name} has no price")


class BudgetUnavailable(Refused):
    """A hard stop is set but the spend cannot be read (database unreachable)."""

    hint = "error.budget_unavailable"

    def __init__(self) -> None:
        super().__init__("budget hard stop set and the call log cannot be read")


@dataclass(frozen=True)
class Budget:
    """A monthly spending limit in its own currency; `hard_stop` refuses calls once reached.

    `user_id` is DEPLOYMENT for the deployment's budget, else the person it caps.
    """

    amount: Decimal
    currency: str = "USD"
    hard_stop: bool = False
    user_id: str = DEPLOYMENT


@dataclass(frozen=True)
class Status:
    """This month's spend against one budget, in the budget's currency, and how many of the
    month's calls it covers have no price (their cost is not in `spent`)."""

    budget: Budget
    spent: Decimal
    unpriced: int = 0

    @property
    def fraction(self) -> Decimal:
        """Spent over budget (a budget of 0 is reached from the start)."""
        if self.budget.amount == 0:
            return Decimal(1)
        return self.spent / self.budget.amount

    @property
    def level(self) -> str | None:
        """None below 80%, "warn" from 80%, "over" from 100%."""
        if self.fraction >= 1:
            return "over"
        return "warn" if self.fraction >= WARN_AT else None


def parse_budget(amount: Any, currency: str = "USD") -> Decimal | None:
    """A budget typed by a user: empty for none, else 0 to MAX_BUDGET in its currency;
    PriceError says what is wrong (the bound named in the sentence)."""
    if currency not in pricing.CURRENCIES:
        raise pricing.PriceError("prices.err_currency", value=str(currency)[:10])
    return pricing.parse_amount(amount, field="budget", allow_empty=True, limit=MAX_BUDGET,
                                huge_key="budget.err_huge", currency=currency)


_known: dict[str, dict[str, Budget]] = {}  # per database: the budgets last read, by user_id
_lock = threading.Lock()


def _remember(eng: Engine, found: dict[str, Budget]) -> None:
    with _lock:
        _known.setdefault(str(eng.url), {}).update(found)


def _read(eng: Engine, scopes: list[str]) -> dict[str, Budget]:
    b = store.budgets.c
    with eng.connect() as conn:
        rows = conn.execute(select(b.user_id, b.amount, b.currency, b.hard_stop)
                            .where(b.user_id.in_(scopes))).all()
    found = {r.user_id: Budget(Decimal(str(r.amount)), r.currency, bool(r.hard_stop),
                               r.user_id) for r in rows}
    with _lock:
        mine = _known.setdefault(str(eng.url), {})
        for scope in scopes:  # a budget cleared elsewhere is forgotten here too
            mine.pop(scope, None)
        mine.update(found)
    return found


def get_budget(user_id: str = DEPLOYMENT, *, eng: Engine | None = None) -> Budget | None:
    """The deployment's budget (DEPLOYMENT), or a person's own cap, or None."""
    return _read(eng or store.engine(), [user_id]).get(user_id)


def budgets_for(user_id: str, *, eng: Engine | None = None) -> list[Budget]:
    """The budgets a person's calls count against: the deployment's, then their own cap."""
    found = _read(eng or store.engine(), [DEPLOYMENT, user_id])
    return [found[s] for s in (DEPLOYMENT, user_id) if s in found]


def set_budget(user_id: str, amount: Any, currency: str = "USD", hard_stop: bool = False, *,
               eng: Engine | None = None) -> Budget | None:
    """Keep (or, with an empty amount, clear) a budget: DEPLOYMENT's or a person's own cap.

    The budget keeps its currency and size as given; a bad amount raises PriceError.
    """
    eng = eng or store.engine()
    parsed = parse_budget(amount, currency)
    b = store.budgets
    with eng.begin() as conn:
        conn.execute(b.delete().where(b.c.user_id == user_id))
        if parsed is not None:
            conn.execute(b.insert().values(user_id=user_id, amount=parsed, currency=currency,
                                           hard_stop=bool(hard_stop)))
    return get_budget(user_id, eng=eng)


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of this month, UTC (the budget's month is the UTC month)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _spend(eng: Engine, budget: Budget, now: datetime | None) -> tuple[Decimal, int]:
    """This month's spend in USD (interrupted calls included) and its finished, unpriced
    calls, over everyone (the deployment's budget) or one person (their cap)."""
    c = store.calls.c
    where = [c.started_at >= month_start(now)]
    if budget.user_id != DEPLOYMENT:
        where.insert(0, c.user_id == budget.user_id)
    unpriced = func.sum(case((and_(c.cost_usd.is_(None), c.status != "running"), 1), else_=0))
    with eng.connect() as conn:
        spent, missing = conn.execute(select(func.sum(c.cost_usd), unpriced).where(*where)).one()
    return Decimal(str(spent or 0)), int(missing or 0)


def _status(eng: Engine, budget: Budget, now: datetime | None) -> Status:
    spent_usd, unpriced = _spend(eng, budget, now)
    spent = spent_usd * pricing.cny_per_usd(eng=eng) if budget.currency == "CNY" else spent_usd
    return Status(budget, spent, unpriced)


def statuses(user_id: str, *, eng: Engine | None = None,
             now: datetime | None = None) -> list[Status]:
    """This month against each budget a person's calls count against (none without one)."""
    eng = eng or store.engine()
    return [_status(eng, b, now) for b in budgets_for(user_id, eng=eng)]


def status(user_id: str, *, eng: Engine | None = None,
           now: datetime | None = None) -> Status | None:
    """The budget nearest its end for this person (deployment's or their own), or None."""
    found = statuses(user_id, eng=eng, now=now)
    return max(found, key=lambda s: s.fraction) if found else None


def enforce(user_id: str, endpoint: Endpoint, model: str, *,
            eng: Engine | None = None) -> None:
    """Refuse a new call that the hard stop of the deployment's budget or the person's cap
    forbids; a call that cannot cost money always passes.

    Raises BudgetExceeded when a budget with a hard stop is spent (a budget of 0: at once),
    BudgetUnpriced when a hard stop is set and the model has no price, and BudgetUnavailable
    when the database cannot be read and a hard stop was last seen. Otherwise returns.
    """
    eng = eng or store.engine()
    try:
        if pricing.pricing_mode(endpoint, eng=eng) == "free":
            return  # nothing to read: a free endpoint is never refused, even offline
        hard = [b for b in budgets_for(user_id, eng=eng) if b.hard_stop]
        if not hard:
            return
        price, _source = pricing.price_in_force(endpoint, model, eng=eng)
        if price is not None and price.free:
            return
        if price is None:
            raise BudgetUnpriced(endpoint, model)
        for budget in hard:
            found = _status(eng, budget, None)
            if found.level == "over":
                raise BudgetExceeded(found.spent, budget)
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - any database failure means "cannot check"
        unchecked(user_id, endpoint, model, url=str(eng.url), cause=exc)


def unchecked(user_id: str, endpoint: Endpoint, model: str, *, url: str,
              cause: BaseException | None = None) -> None:
    """The spend could not be read (a database error, or no answer before the metered path's
    deadline) on the database at `url`. Free by what was last read of the deployment's prices
    and modes (a local Ollama): still never refused. Anything else fails closed, raising
    BudgetUnavailable, when a hard stop was last seen for the deployment or this user."""
    price, _source = pricing.price_in_force(endpoint, model, known=pricing.last_known(url=url))
    if price is not None and price.free:
        return
    with _lock:
        last = _known.get(url, {})
    if any(b.hard_stop for s, b in last.items() if s in (DEPLOYMENT, user_id)):
        raise BudgetUnavailable() from cause
