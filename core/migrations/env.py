"""Alembic environment: the connection comes from core.store (config.attributes["connection"])."""

from __future__ import annotations

from alembic import context

from core.store import metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
