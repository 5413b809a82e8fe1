"""Call log: an app-made key per call (a retried write never adds a second row) and a flag
for a call completed after it had been marked interrupted.

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Two columns on calls (existing rows: no key, not late) and a unique index on the key."""
    op.add_column("calls", sa.Column("call_key", sa.String(40)))
    op.add_column("calls", sa.Column("late", sa.Boolean, nullable=False,
                                     server_default=sa.false()))
    op.create_index("ux_calls_call_key", "calls", ["call_key"], unique=True)


def downgrade() -> None:
    """Drop the index and the two columns."""
    op.drop_index("ux_calls_call_key", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("late")
        batch.drop_column("call_key")
