"""Alembic migrations for the OwnGPT database; core.store runs them on start."""
