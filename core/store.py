"""The database: a SQLite file under data/ by default, DATABASE_URL (PostgreSQL) for teams.

One concern, kept whole (~580 lines): the tables, the engine and its migrations, and the few
statements every module shares (the rollup's marker, the database's clock), so the schema is
read in one place."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
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
    false,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import OperationalError

T = TypeVar("T")

DEFAULT_PATH = Path("data") / "owngpt.sqlite3"

metadata = MetaData()

# Where a call came from; the usage page filters by it. "test": Settings' connection test.
SOURCES = ("chat", "compare", "batch", "title", "test")
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
    # Made by the app when the call is made: a retried write of the row never adds a second.
    Column("call_key", String(40)),
    # Completed after another process had marked it interrupted (its own was only slow).
    Column("late", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_calls_user_started", "user_id", "started_at"),
    Index("ux_calls_call_key", "call_key", unique=True),
    # Covers every aggregate of the usage page (hourly buckets, facets, speed, dearest): a
    # million calls are read from this narrow index instead of the wide table (bench/README).
    Index("ix_calls_user_rollup", "user_id", "started_at", "endpoint", "model", "source",
          "status", "comparison_id", "input_tokens", "cached_input_tokens", "output_tokens",
          "reasoning_tokens", "cost_usd", "ttft_s", "total_s"),
    # The deployment's month for the budget's hard stop: every user's spend and unpriced calls
    # read from the index alone (core.budget).
    Index("ix_calls_started_cost", "started_at", "status", "cost_usd"),
)

# The call log summed per UTC hour, endpoint and model, for hours that are over: the usage
# page reads a year from here in milliseconds instead of aggregating a million rows
# (core/usage.py keeps it; `rolled` says up to when, per user).
calls_hourly = Table(
    "calls_hourly",
    metadata,
    Column("user_id", String(200), primary_key=True),
    Column("hour", String(13), primary_key=True),  # "YYYY-MM-DD HH", UTC
    Column("endpoint", String(200), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("calls", Integer, nullable=False),
    Column("input", BigInteger, nullable=False),
    Column("cached", BigInteger, nullable=False),
    Column("output", BigInteger, nullable=False),
    Column("reasoning", BigInteger, nullable=False),
    Column("cost", Numeric(18, 8), nullable=False),
    Column("priced", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
)
calls_rolled = Table(
    "calls_rolled",
    metadata,
    Column("user_id", String(200), primary_key=True),
    Column("until", DateTime(timezone=True), nullable=False),  # calls before this are rolled
)


def forget_rollup(conn: Any, user_id: str) -> None:
    """Drop a user's hourly rollup (past calls changed, e.g. re-priced); rebuilt on demand."""
    conn.execute(calls_hourly.delete().where(calls_hourly.c.user_id == user_id))
    conn.execute(calls_rolled.delete().where(calls_rolled.c.user_id == user_id))


def hour_of(at: Any) -> str:
    """The rollup's hour ("YYYY-MM-DD HH", UTC) of a time read from the database."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H")


def rolled_until(conn: Any, user_id: str) -> Any:
    """Up to when the user's calls are in `calls_hourly` (None: not rolled up), read under a
    lock on the marker, so a piece of the rollup being built cannot pass it meanwhile."""
    return conn.execute(select(calls_rolled.c.until).where(calls_rolled.c.user_id == user_id)
                        .with_for_update()).scalar()


def adjust_rollup(conn: Any, old: Any, new: dict[str, Any]) -> bool:
    """A call already counted in `calls_hourly` changed (a late completion of an interrupted
    row): its hour's sums move by the difference, in the caller's transaction. `old` is the
    row as it was (read in this transaction), `new` the columns written. False when the
    call's hour is not rolled up yet (nothing to adjust)."""
    until = rolled_until(conn, old.user_id)
    if until is None or as_utc(old.started_at) >= as_utc(until):
        return False

    def delta(name: str) -> Any:
        return (new.get(name) or 0) - (getattr(old, name) or 0)

    h = calls_hourly.c
    conn.execute(calls_hourly.update().where(
        h.user_id == old.user_id, h.hour == hour_of(old.started_at),
        h.endpoint == old.endpoint, h.model == old.model).values(
        input=h.input + delta("input_tokens"), cached=h.cached + delta("cached_input_tokens"),
        output=h.output + delta("output_tokens"),
        reasoning=h.reasoning + delta("reasoning_tokens"),
        cost=h.cost + delta("cost_usd"),
        priced=h.priced + (int(new.get("cost_usd") is not None)
                           - int(old.cost_usd is not None)),
        errors=h.errors + (int(new.get("status") == "error") - int(old.status == "error"))))
    return True


def db_now(dialect: str, offset_s: float | None = None) -> Any:
    """The database's clock (plus `offset_s` seconds) as the value of a DateTime column:
    heartbeats and staleness are measured on it, so machines whose clocks disagree never take
    each other's live calls for dead."""
    if dialect == "sqlite":
        # As SQLAlchemy stores a DateTime ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), so that it
        # compares with the other rows' times as text.
        shift = f"{offset_s or 0:+.3f} seconds"
        return func.strftime("%Y-%m-%d %H:%M:%f", "now", shift).concat("000")
    now = func.now()
    if offset_s is None:
        return now
    return now + func.make_interval(0, 0, 0, 0, 0, 0, offset_s)


# The deployment's own prices for a model (per million tokens): one bill, one price table. They
# come before genai-prices and the repo's vendor table (core/pricing.py).
prices = Table(
    "prices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("endpoint", String(200), nullable=False),  # "*" for any endpoint
    Column("model", String(200), nullable=False),
    Column("input_per_mtok", Numeric(18, 8), nullable=False),
    Column("cached_input_per_mtok", Numeric(18, 8)),
    Column("output_per_mtok", Numeric(18, 8), nullable=False),
    Column("currency", String(3), nullable=False, default="USD"),  # USD or CNY, as the vendor
    UniqueConstraint("endpoint", "model"),
)

# Monthly budgets: user_id "*" is the deployment's (the owner's cap on the one bill), any other
# is that person's own cap. Every hard-stop check reads both (core/budget.py).
DEPLOYMENT = "*"
budgets = Table(
    "budgets",
    metadata,
    Column("user_id", String(200), primary_key=True),
    Column("amount", Numeric(18, 8), nullable=False),
    Column("currency", String(3), nullable=False),  # USD or CNY: the budget keeps its own
    Column("hard_stop", Boolean, nullable=False, default=False),
)

# Settings of the deployment as a whole, such as the CNY rate (name -> JSON value).
settings = Table(
    "settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", JSON),
)

# How an endpoint's calls are priced, set in Settings (core.pricing.PRICING_MODES); an endpoint
# from secrets keeps the `pricing` written there.
endpoint_pricing = Table(
    "endpoint_pricing",
    metadata,
    Column("endpoint", String(200), primary_key=True),  # the endpoint's name
    Column("mode", String(20), nullable=False),
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

# A saved chat. `seq` grows by one with every write, so a tab that drew an older state is told
# (core.conversations.ConversationChanged) instead of writing over what another tab did.
# `leaf_id` is the last message of the branch on screen; deleting a conversation deletes it.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),  # random and URL-safe: /?c=<id>
    Column("user_id", String(200), nullable=False),
    Column("title", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),  # UTC
    Column("updated_at", DateTime(timezone=True), nullable=False),  # UTC
    Column("endpoint", String(200), nullable=False, default=""),  # a name, never a key
    Column("model", String(200), nullable=False, default=""),
    Column("system_prompt", Text, nullable=False, default=""),
    Column("params", JSON),
    Column("seq", Integer, nullable=False, default=0),
    Column("leaf_id", Integer),
    Index("ix_conversations_user_updated", "user_id", "updated_at"),
)

# One message of a conversation: a tree, as regenerating or editing makes a sibling.
messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("conversation_id", String(32),
           ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", Integer, ForeignKey("messages.id", ondelete="CASCADE")),
    Column("role", String(20), nullable=False),  # user or assistant
    Column("text", Text, nullable=False, default=""),
    Column("reasoning", Text, nullable=False, default=""),  # shown, never sent back
    # ok, stopped, error; running while its request is out, interrupted if its process died
    Column("status", String(20), nullable=False, default="ok"),
    Column("error_kind", String(40)),
    Column("call_id", Integer, ForeignKey("calls.id", ondelete="SET NULL")),
    Column("model", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),  # UTC
    Column("position", Integer, nullable=False, default=0),  # depth in the tree, from 0
    # An answer exists from the moment its request goes out: status running, its text
    # refreshed with its call's heartbeat; `call_key` (the call's own, `Call.key`) finds the
    # call's row, which settles it as interrupted if its process dies (metering).
    Column("call_key", String(40)),
    # Covers the tree walk (ids and parents only) without reading any text.
    Index("ix_messages_conversation_tree", "conversation_id", "id", "parent_id"),
    Index("ix_messages_status", "status"),  # the few still running, among millions
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

# One row per pane per turn: the answer, written running (its text refreshed with the call's
# heartbeat) and completed by the worker thread.
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
    Column("call_key", String(40)),  # the pane's call (`Call.key`), as for messages
    UniqueConstraint("comparison_id", "turn", "position"),
    Index("ix_comparison_answers_status", "status"),
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


# Why the configured database could not be used (None when it could): "unwritable",
# "bad_url" or "unreachable". The app then keeps working on an in-memory SQLite database.
_problem: dict[str, str] = {}
MEMORY_URL = "sqlite://"
# The first engine of a process creates or migrates the database: two threads (the writer,
# the budget's readers, a page) must not do that at once.
_engine_lock = threading.RLock()


def engine(url: str | None = None) -> Engine:
    """The engine for a URL (default: the configured one), made once per process.

    When the configured database cannot be opened, chatting must still work: the engine is
    an in-memory SQLite database instead and `problem()` says why (the log is not kept).
    An explicit url is never replaced.
    """
    with _engine_lock:
        if url is not None:
            return _engine_for(url)
        configured = database_url()
        if configured in _problem:
            return _memory_engine()
        try:
            return _engine_for(configured)
        except Exception as exc:  # noqa: BLE001 - any failure to open: fall back, say why
            _problem[configured] = _classify(configured, exc)
            return _memory_engine()


def problem() -> str | None:
    """Why the configured database is not in use ("unwritable", "bad_url", "unreachable")."""
    return _problem.get(database_url())


def _classify(url: str, exc: Exception) -> str:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if isinstance(exc, ArgumentError | NoSuchModuleError | ValueError):
        return "bad_url"
    if url.startswith("sqlite:"):
        return "unwritable"
    return "unreachable"


@functools.cache
def _memory_engine() -> Engine:
    from sqlalchemy.pool import StaticPool

    # One shared connection, so every thread sees the same in-memory tables.
    eng = create_engine(MEMORY_URL, poolclass=StaticPool,
                        connect_args={"check_same_thread": False})
    metadata.create_all(eng)
    return eng


@functools.cache
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        folder = Path(url.removeprefix("sqlite:///")).parent
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):  # SQLite needs the folder for its WAL files
            raise PermissionError(f"{folder} is not writable")
    # A file does not drop connections; a database server may, so those are pinged. A
    # server that is not there fails in seconds, not after the OS's connect timeout.
    args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    eng = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), connect_args=args)
    if eng.dialect.name == "sqlite":
        event.listen(eng, "connect", _sqlite_pragmas)
    migrate(eng)
    return eng


MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest migration revision."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def migrate(eng: Engine) -> None:
    """Bring the database to the newest schema, once, even with several processes starting.

    An empty database gets create_all and is stamped head (fast: tests make one per test);
    one made by the old create_all (tables, no alembic_version) is stamped "0001" and
    upgraded in place, never recreated. A lock makes a second process wait, then see head.
    """
    from alembic import command

    with eng.connect() as conn:
        _lock(conn)
        try:
            tables = set(inspect(conn).get_table_names())
            cfg = _alembic_config(conn)
            if not tables - {"alembic_version"}:
                metadata.create_all(conn)
                command.stamp(cfg, "head")
            else:
                if "alembic_version" not in tables:
                    command.stamp(cfg, "0001")
                command.upgrade(cfg, "head")
            conn.commit()
        finally:
            _unlock(conn)


def _lock(conn: Connection) -> None:
    # SQLite: a write lock held for the whole migration; the other process's BEGIN
    # IMMEDIATE waits (busy_timeout, then our retry). PostgreSQL: an advisory lock.
    if conn.dialect.name == "sqlite":
        for _ in range(24):  # each try waits busy_timeout (5 s): two minutes in all
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                time.sleep(0.5)
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_lock(712406001)")


def _unlock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_unlock(712406001)")
        conn.commit()
    elif conn.dialect.name == "sqlite":
        conn.rollback()  # no-op after the commit; releases the lock after an error


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
    """Remember a choice for this user: one upsert, so two tabs writing at once cannot both
    insert (read-then-insert raced into a unique-constraint error)."""
    eng = eng or engine()
    if eng.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif eng.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the app supports SQLite and PostgreSQL only
        raise NotImplementedError(eng.dialect.name)
    stmt = insert(preferences).values(user_id=user_id, name=name, value=value)
    stmt = stmt.on_conflict_do_update(
        index_elements=[preferences.c.user_id, preferences.c.name],
        set_={"value": stmt.excluded.value},
    )
    retry_locked(lambda: _execute(eng, stmt))


def _execute(eng: Engine, stmt: Any) -> None:
    with eng.begin() as conn:
        conn.execute(stmt)


def retry_locked(write: Callable[[], T], attempts: int = 3) -> T:
    """Run a write, retrying a few times when SQLite still says "database is locked" after
    its busy_timeout (a long writer elsewhere); any other error, or the last, is raised."""
    for attempt in range(attempts):
        try:
            return write()
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def as_utc(value: datetime) -> datetime:
    """A datetime read back from the database, in UTC: SQLite hands back naive datetimes,
    which were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
