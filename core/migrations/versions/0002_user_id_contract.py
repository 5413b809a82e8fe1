"""The contract schema: user -> user_id, running/interrupted status, heartbeat, server model,
HTTP status, request id, load time, comparison_id, usage-page indexes, price currency.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Rename user to user_id and add the contract's columns and indexes."""
    # PostgreSQL reads a bare "user" as the database role, so the column is renamed everywhere.
    with op.batch_alter_table("calls", recreate="auto") as batch:
        batch.drop_index("ix_calls_user")
        batch.alter_column("user", new_column_name="user_id", existing_type=sa.String(200),
                           existing_nullable=False)
        batch.alter_column("status", type_=sa.String(20), existing_type=sa.String(10),
                           existing_nullable=False)
        batch.alter_column("source", type_=sa.String(20), existing_type=sa.String(40),
                           existing_nullable=False)
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("server_model", sa.String(200)))
        batch.add_column(sa.Column("http_status", sa.Integer))
        batch.add_column(sa.Column("request_id", sa.String(200)))
        batch.add_column(sa.Column("load_s", sa.Float))
        batch.add_column(sa.Column("comparison_id", sa.String(64)))
    with op.batch_alter_table("calls") as batch:
        batch.create_index("ix_calls_user_id", ["user_id"])
        batch.create_index("ix_calls_status", ["status"])
        batch.create_index("ix_calls_conversation_id", ["conversation_id"])
        batch.create_index("ix_calls_comparison_id", ["comparison_id"])
        batch.create_index("ix_calls_user_started", ["user_id", "started_at"])
    with op.batch_alter_table("prices", recreate="auto") as batch:
        batch.alter_column("user", new_column_name="user_id", existing_type=sa.String(200),
                           existing_nullable=False)
        batch.add_column(sa.Column("currency", sa.String(3), nullable=False,
                                   server_default="USD"))
    with op.batch_alter_table("preferences", recreate="auto") as batch:
        batch.alter_column("user", new_column_name="user_id", existing_type=sa.String(200),
                           existing_nullable=False)


def downgrade() -> None:
    """Back to the baseline (the new columns' values are lost)."""
    with op.batch_alter_table("preferences") as batch:
        batch.alter_column("user_id", new_column_name="user", existing_type=sa.String(200))
    with op.batch_alter_table("prices") as batch:
        batch.drop_column("currency")
        batch.alter_column("user_id", new_column_name="user", existing_type=sa.String(200))
    with op.batch_alter_table("calls") as batch:
        for name in ("ix_calls_user_started", "ix_calls_comparison_id",
                     "ix_calls_conversation_id", "ix_calls_status", "ix_calls_user_id"):
            batch.drop_index(name)
        for name in ("comparison_id", "load_s", "request_id", "http_status", "server_model",
                     "ended_at", "heartbeat_at"):
            batch.drop_column(name)
        batch.alter_column("source", type_=sa.String(40), existing_type=sa.String(20))
        batch.alter_column("status", type_=sa.String(10), existing_type=sa.String(20))
        batch.alter_column("user_id", new_column_name="user", existing_type=sa.String(200))
        batch.create_index("ix_calls_user", ["user"])
