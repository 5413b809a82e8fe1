"""The database: a SQLite file under data/ by default, DATABASE_URL (PostgreSQL) for teams."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)

DEFAULT_PATH = Path("data") / "owngpt.sqlite3"

metadata = MetaData()

# Where a call came from; the usage page filters by it.
SOURCES = ("chat", "compare", "batch", "title")
# running: the request is out; interrupted: its process died before the call ended.
STATUSES = ("running", "ok", "stopped", "error", "interrupted")

# One row per model call, whatever its outcome: written (status running) when the request
# goes out, completed when the call ends. Never a key: endpoint name and base URL only.
calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", String(200), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False, index=True),  # UTC
    Column("heartbeat_at", DateTime(timezone=True)),  # refreshed while running
    Column("ended_at", DateTime(timezone=True)),
    Column("source", String(20), nullable=False),  # one of SOURCES
    Column("endpoint", String(200), nullable=False),
    Column("provider", String(20), nullable=False),  # openai, azure, ollama
    Column("base_url", String(500), nullable=False),
    Column("model", String(200), nullable=False, index=True),  # the model asked for
    Column("server_model", String(200)),  # the model the server says answered
    Column("status", String(20), nullable=False, index=True),  # one of STATUSES
    Column("error_kind", String(40)),
    Column("error_detail", Text),
    Column("http_status", Integer),  # the server's HTTP status, where it gave one
    Column("request_id", String(200)),  # the server's request id, where it gave one
    Column("finish_reason", String(40)),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("cached_input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("estimated", Boolean, nullable=False, default=False),
    Column("cost_usd", Numeric(18, 8)),  # NULL when the price is unknown, never a made-up 0
    Column("ttft_s", Float),
    Column("total_s", Float),
    Column("load_s", Float),  # time the server spent loading the model (Ollama)
    Column("output_chars", Integer, nullable=False, default=0),
    Column("conversation_id", String(64), index=True),
    Column("comparison_id", String(64), index=True),
    Index("ix_calls_user_started", "user_id", "started_at"),
)

# Prices a user set for a model (per million tokens), taking precedence over genai-prices.
prices = Table(
    "prices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("endpoint", String(200), nullable=False),  # "*" for any endpoint
    Column("model", String(200), nullable=False),
    Column("input_per_mtok", Numeric(18, 8), nullable=False),
    Column("cached_input_per_mtok", Numeric(18, 8)),
    Column("output_per_mtok", Numeric(18, 8), nullable=False),
    Column("currency", String(3), nullable=False, default="USD"),  # USD or CNY, as the vendor
    UniqueConstraint("user_id", "endpoint", "model"),
)

# Small per-user choices the app remembers, such as the model used last.
preferences = Table(
    "preferences",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("name", String(100), nullable=False),
    Column("value", JSON),
    UniqueConstraint("user_id", "name"),
)


# --- Compare: two to four panes on the same prompt, their answers and the user's votes ---
# A comparison is one page session; in blind mode the panes' endpoint/model are stored as
# usual and only hidden by core.compare until the first vote.
comparisons = Table(
    "comparisons",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("title", String(200), nullable=False),  # the first prompt, cut short
    Column("blind", Boolean, nullable=False, default=False),
    Column("system_prompt", Text, nullable=False, default=""),
    Column("params", JSON),  # the shared Params as a dict
    Column("per_pane", Boolean, nullable=False, default=False),  # panes use their own settings
    Index("ix_comparisons_user_created", "user_id", "created_at"),
)

comparison_panes = Table(
    "comparison_panes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("comparison_id", String(32), ForeignKey("comparisons.id", ondelete="CASCADE"),
           nullable=False),
    Column("position", Integer, nullable=False),  # 0 = A, 1 = B, ...
    Column("endpoint", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("system_prompt", Text),  # used only when the comparison is per_pane
    Column("params", JSON),
    UniqueConstraint("comparison_id", "position"),
)

# One row per user message sent to every pane.
comparison_turns = Table(
    "comparison_turns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("comparison_id", String(32), ForeignKey("comparisons.id", ondelete="CASCADE"),
           nullable=False),
    Column("turn", Integer, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("comparison_id", "turn"),
)

# One row per pane per turn: the answer, written running and completed by the worker thread.
comparison_answers = Table(
    "comparison_answers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("comparison_id", String(32), ForeignKey("comparisons.id", ondelete="CASCADE"),
           nullable=False),
    Column("turn", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("reasoning", Text, nullable=False, default=""),
    Column("status", String(20), nullable=False),  # one of STATUSES
    Column("error_kind", String(40)),
    Column("call_id", Integer, ForeignKey("calls.id", ondelete="SET NULL")),
    UniqueConstraint("comparison_id", "turn", "position"),
)

# One vote per turn; winner NULL with outcome tie or both_bad. Pairwise rows are derived.
comparison_votes = Table(
    "comparison_votes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("comparison_id", String(32), ForeignKey("comparisons.id", ondelete="CASCADE"),
           nullable=False),
    Column("user_id", String(200), nullable=False, index=True),
    Column("turn", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),  # win, tie, both_bad
    Column("winner", Integer),  # the winning pane's position when outcome is win
    Column("voted_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("comparison_id", "turn"),
)


def database_url() -> str:
    """DATABASE_URL if set, else the local SQLite file."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url.startswith("postgres://"):  # Heroku-style URLs; SQLAlchemy wants postgresql://
        url = "postgresql://" + url.removeprefix("postgres://")
    return url or f"sqlite:///{DEFAULT_PATH}"


def engine(url: str | None = None) -> Engine:
    """The engine for a URL (default: the configured one), made once per process."""
    return _engine_for(url or database_url())


@functools.cache
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # A file does not drop connections; a database server may, so those are pinged.
    eng = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if eng.dialect.name == "sqlite":
        event.listen(eng, "connect", _sqlite_pragmas)
    metadata.create_all(eng)
    return eng


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the page read the log while a stream's thread writes its row.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # With WAL this is safe against corruption; a power cut may lose the last few rows.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_preference(user_id: str, name: str, default: Any = None, *,
                   eng: Engine | None = None) -> Any:
    """A remembered choice, or the default."""
    with (eng or engine()).connect() as conn:
        row = conn.execute(
            select(preferences.c.value).where(
                preferences.c.user_id == user_id, preferences.c.name == name
            )
        ).first()
    return default if row is None else row[0]


def set_preference(user_id: str, name: str, value: Any, *, eng: Engine | None = None) -> None:
    """Remember a choice for this user."""
    with (eng or engine()).begin() as conn:
        where = (preferences.c.user_id == user_id) & (preferences.c.name == name)
        if conn.execute(select(preferences.c.id).where(where)).first():
            conn.execute(preferences.update().where(where).values(value=value))
        else:
            conn.execute(preferences.insert().values(user_id=user_id, name=name, value=value))
