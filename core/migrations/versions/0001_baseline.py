"""Baseline: the tables as create_all made them before the user_id contract (commit bd0679a).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the baseline tables."""
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("base_url", sa.String(500), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("error_kind", sa.String(40)),
        sa.Column("error_detail", sa.Text),
        sa.Column("finish_reason", sa.String(40)),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 8)),
        sa.Column("ttft_s", sa.Float),
        sa.Column("total_s", sa.Float),
        sa.Column("output_chars", sa.Integer, nullable=False),
        sa.Column("conversation_id", sa.String(64)),
    )
    op.create_index("ix_calls_user", "calls", ["user"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_model", "calls", ["model"])
    op.create_table(
        "prices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(18, 8)),
        sa.Column("output_per_mtok", sa.Numeric(18, 8), nullable=False),
        sa.UniqueConstraint("user", "endpoint", "model"),
    )
    op.create_table(
        "preferences",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.JSON),
        sa.UniqueConstraint("user", "name"),
    )


def downgrade() -> None:
    """Drop the baseline tables."""
    for name in ("preferences", "prices", "calls"):
        op.drop_table(name)
