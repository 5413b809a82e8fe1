"""Money belongs to the deployment: one price table and CNY rate, a deployment budget and
optional per-person caps, endpoints' pricing modes, and an index for the month's spend.

Today's per-user rows are moved, none dropped unseen:

* prices: one row per (endpoint, model). Where several users priced the same one, the row of
  "local" (the person at the laptop, who owns an ungated deployment) wins; else the dearest
  (input + output per million tokens, in USD at the deployment's rate), so the budget never
  reads less than someone meant; a tie goes to the first user id in sort order. Each row merged
  away is named in the migration's log.
* the CNY rate: "local"'s, else the rate most users set (a tie: the first user id's).
* budgets: "local"'s becomes the deployment's budget; every other user's becomes their own cap.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import logging
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
OWNER = "local"  # the user id of an ungated deployment
DEPLOYMENT = "*"
DEFAULT_RATE = Decimal("7.1")

_prefs = sa.table("preferences", sa.column("id", sa.Integer), sa.column("user_id", sa.String),
                  sa.column("name", sa.String), sa.column("value", sa.JSON))
_settings = sa.table("settings", sa.column("name", sa.String), sa.column("value", sa.JSON))
_budgets = sa.table("budgets", sa.column("user_id", sa.String), sa.column("amount", sa.Numeric),
                    sa.column("currency", sa.String), sa.column("hard_stop", sa.Boolean))
PRICE_COLUMNS = ("endpoint", "model", "input_per_mtok", "cached_input_per_mtok",
                 "output_per_mtok", "currency")


def _decimal(value: Any) -> Decimal | None:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _pick_rate(rates: dict[str, Decimal]) -> Decimal | None:
    if not rates:
        return None
    if OWNER in rates:
        return rates[OWNER]
    counts = Counter(rates.values())
    top = max(counts.values())
    return next(rates[u] for u in sorted(rates) if counts[rates[u]] == top)


def _usd(row: dict[str, Any], rate: Decimal) -> Decimal:
    total = Decimal(str(row["input_per_mtok"])) + Decimal(str(row["output_per_mtok"]))
    return total / rate if row["currency"] == "CNY" else total


def _pick_price(rows: list[dict[str, Any]], rate: Decimal) -> dict[str, Any]:
    owner = [r for r in rows if r["user_id"] == OWNER]
    if owner:
        return owner[0]
    return sorted(rows, key=lambda r: (-_usd(r, rate), r["user_id"]))[0]


def upgrade() -> None:
    """New tables, then today's per-user prices, rates and budgets moved into them."""
    conn = op.get_bind()
    op.create_table("settings", sa.Column("name", sa.String(100), primary_key=True),
                    sa.Column("value", sa.JSON))
    op.create_table("budgets", sa.Column("user_id", sa.String(200), primary_key=True),
                    sa.Column("amount", sa.Numeric(18, 8), nullable=False),
                    sa.Column("currency", sa.String(3), nullable=False),
                    sa.Column("hard_stop", sa.Boolean, nullable=False))
    op.create_table("endpoint_pricing", sa.Column("endpoint", sa.String(200), primary_key=True),
                    sa.Column("mode", sa.String(20), nullable=False))
    with op.batch_alter_table("calls") as batch:
        batch.create_index("ix_calls_started_cost", ["started_at", "status", "cost_usd"])

    prefs = [dict(r._mapping) for r in conn.execute(
        sa.select(_prefs).where(_prefs.c.name.in_(["cny_per_usd", "budget"])))]
    rates = {p["user_id"]: r for p in prefs if p["name"] == "cny_per_usd"
             and (r := _decimal(p["value"])) is not None and r > 0}
    rate = _pick_rate(rates)
    if rate is not None:
        conn.execute(_settings.insert().values(name="cny_per_usd", value=str(rate)))
    for p in prefs:
        value = p["value"]
        if p["name"] != "budget" or not isinstance(value, dict):
            continue
        amount = _decimal(value.get("amount"))
        if amount is None:
            log.warning("budget of %s not moved: %r is not an amount", p["user_id"], value)
            continue
        conn.execute(_budgets.insert().values(
            user_id=DEPLOYMENT if p["user_id"] == OWNER else p["user_id"], amount=amount,
            currency=str(value.get("currency") or "USD"), hard_stop=bool(value.get("hard_stop"))))
    conn.execute(_prefs.delete().where(_prefs.c.name.in_(["cny_per_usd", "budget"])))

    old = sa.Table("prices", sa.MetaData(), autoload_with=conn)
    rows = [dict(r._mapping) for r in conn.execute(sa.select(old))]
    op.drop_table("prices")
    new = op.create_table(
        "prices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(18, 8)),
        sa.Column("output_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.UniqueConstraint("endpoint", "model"),
    )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["endpoint"], row["model"]), []).append(row)
    kept = []
    for key, group in sorted(groups.items()):
        chosen = _pick_price(group, rate or DEFAULT_RATE)
        for other in group:
            if other is not chosen:
                log.warning("price of %s on %s set by %s merged into the one set by %s",
                            key[1], key[0], other["user_id"], chosen["user_id"])
        kept.append({k: chosen[k] if k != "currency" else (chosen[k] or "USD")
                     for k in PRICE_COLUMNS})
    if kept:
        op.bulk_insert(new, kept)


def downgrade() -> None:
    """Back to per-user rows, all given to "local" (per-person caps go back to their people)."""
    conn = op.get_bind()
    deployment = [dict(r._mapping) for r in conn.execute(sa.text(
        "SELECT endpoint, model, input_per_mtok, cached_input_per_mtok, output_per_mtok, "
        "currency FROM prices"))]
    op.drop_table("prices")
    old = op.create_table(
        "prices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(18, 8)),
        sa.Column("output_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="USD"),
        sa.UniqueConstraint("user_id", "endpoint", "model"),
    )
    if deployment:
        op.bulk_insert(old, [{**r, "user_id": OWNER} for r in deployment])
    moved: set[str] = set()
    # The deployment's budget first: it is "local"'s again, ahead of a cap of local's own.
    for b in sorted((dict(r._mapping) for r in conn.execute(sa.select(_budgets))),
                    key=lambda b: b["user_id"] != DEPLOYMENT):
        user = OWNER if b["user_id"] == DEPLOYMENT else b["user_id"]
        if user in moved:
            continue
        moved.add(user)
        conn.execute(_prefs.insert().values(
            user_id=user, name="budget",
            value={"amount": str(b["amount"]), "currency": b["currency"],
                   "hard_stop": bool(b["hard_stop"])}))
    rate = conn.execute(sa.select(_settings.c.value).where(
        _settings.c.name == "cny_per_usd")).scalar()
    if rate is not None:
        conn.execute(_prefs.insert().values(user_id=OWNER, name="cny_per_usd", value=rate))
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_started_cost")
    op.drop_table("endpoint_pricing")
    op.drop_table("budgets")
    op.drop_table("settings")
