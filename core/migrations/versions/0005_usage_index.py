"""Usage: the hourly rollup of the call log and a covering index for the page's aggregates.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ["user_id", "started_at", "endpoint", "model", "source", "status", "comparison_id",
           "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
           "cost_usd", "ttft_s", "total_s"]


def upgrade() -> None:
    """Two new tables (filled on demand by core.usage.roll_up) and one index on calls."""
    op.create_table(
        "calls_hourly",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("hour", sa.String(13), primary_key=True),
        sa.Column("endpoint", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("input", sa.BigInteger, nullable=False),
        sa.Column("cached", sa.BigInteger, nullable=False),
        sa.Column("output", sa.BigInteger, nullable=False),
        sa.Column("reasoning", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Numeric(18, 8), nullable=False),
        sa.Column("priced", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
    )
    op.create_table(
        "calls_rolled",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("calls") as batch:
        batch.create_index("ix_calls_user_rollup", COLUMNS)


def downgrade() -> None:
    """Drop the index and the rollup tables."""
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_user_rollup")
    op.drop_table("calls_rolled")
    op.drop_table("calls_hourly")
