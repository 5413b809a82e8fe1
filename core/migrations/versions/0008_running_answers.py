"""Answers that exist from the moment their request goes out: the call's key on a chat answer
and on a compare answer (their process's death settles them with their call), and an index
that finds the few still running.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """A nullable column on each table (existing answers have ended: no key) and an index."""
    op.add_column("messages", sa.Column("call_key", sa.String(40)))
    op.create_index("ix_messages_status", "messages", ["status"])
    op.add_column("comparison_answers", sa.Column("call_key", sa.String(40)))
    op.create_index("ix_comparison_answers_status", "comparison_answers", ["status"])


def downgrade() -> None:
    """Drop the indexes and the columns."""
    op.drop_index("ix_comparison_answers_status", table_name="comparison_answers")
    with op.batch_alter_table("comparison_answers") as batch:
        batch.drop_column("call_key")
    op.drop_index("ix_messages_status", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("call_key")
