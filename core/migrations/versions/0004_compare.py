"""Compare: comparisons, their panes, turns, answers and votes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _cid() -> sa.Column:
    return sa.Column("comparison_id", sa.String(32),
                     sa.ForeignKey("comparisons.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    """Create the five tables; only new tables, so SQLite needs no batch mode."""
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON()),
        sa.Column("per_pane", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_comparisons_user_created", "comparisons", ["user_id", "created_at"])
    op.create_table(
        "comparison_panes",
        sa.Column("id", sa.Integer(), primary_key=True),
        _cid(),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("system_prompt", sa.Text()),
        sa.Column("params", sa.JSON()),
        sa.UniqueConstraint("comparison_id", "position"),
    )
    op.create_table(
        "comparison_turns",
        sa.Column("id", sa.Integer(), primary_key=True),
        _cid(),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("comparison_id", "turn"),
    )
    op.create_table(
        "comparison_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        _cid(),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error_kind", sa.String(40)),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="SET NULL")),
        sa.UniqueConstraint("comparison_id", "turn", "position"),
    )
    op.create_table(
        "comparison_votes",
        sa.Column("id", sa.Integer(), primary_key=True),
        _cid(),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("winner", sa.Integer()),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("comparison_id", "turn"),
    )
    op.create_index("ix_comparison_votes_user_id", "comparison_votes", ["user_id"])


def downgrade() -> None:
    """Drop the tables, those pointing at comparisons first."""
    op.drop_index("ix_comparison_votes_user_id", table_name="comparison_votes")
    for name in ("comparison_votes", "comparison_answers", "comparison_turns",
                 "comparison_panes"):
        op.drop_table(name)
    op.drop_index("ix_comparisons_user_created", table_name="comparisons")
    op.drop_table("comparisons")
