"""Migrations: one head, an old database upgraded in place with every row, two processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from core import store
from tests.timing import WAIT_S

ROOT = Path(__file__).resolve().parent.parent
OLD = "bd0679a"  # the commit whose create_all made the databases users have today


def old_schema() -> dict:
    """The tables as core/store.py defined them at OLD (the file, read from git)."""
    src = subprocess.run(["git", "show", f"{OLD}:core/store.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    namespace: dict = {"__name__": "old_store"}
    exec(compile(src, "old_store.py", "exec"), namespace)  # our own history, read from git
    return namespace


CALL = dict(user="alice@example.com", started_at=datetime(2026, 11, 1, 9, 30, tzinfo=UTC),
            source="chat", endpoint="OpenAI", provider="openai",
            base_url="https://api.openai.com/v1", model="gpt-5-mini", status="ok",
            error_kind=None, error_detail=None, finish_reason="stop", input_tokens=120,
            cached_input_tokens=20, output_tokens=200, reasoning_tokens=64, estimated=False,
            cost_usd=Decimal("0.00012345"), ttft_s=0.41, total_s=2.5, output_chars=812,
            conversation_id="c-1")


def make_old_db(path: Path) -> None:
    """A database as the old app left it: old create_all, no alembic_version, some rows."""
    old = old_schema()
    eng = sa.create_engine(f"sqlite:///{path}")
    old["metadata"].create_all(eng)
    with eng.begin() as conn:
        conn.execute(old["calls"].insert(), [CALL, {**CALL, "user": "bob", "status": "error",
                                                    "error_kind": "auth", "cost_usd": None}])
        conn.execute(old["prices"].insert().values(
            user="alice@example.com", endpoint="*", model="m", input_per_mtok=Decimal("1.5"),
            cached_input_per_mtok=None, output_per_mtok=Decimal("6")))
        conn.execute(old["preferences"].insert().values(user="bob", name="last_model",
                                                        value={"model": "llama3"}))
    eng.dispose()


def test_single_head() -> None:
    scripts = ScriptDirectory(str(store.MIGRATIONS))
    assert scripts.get_heads() == [store.head()]
    assert store.head() >= "0002"
    assert scripts.get_revision("0001").down_revision is None


def test_old_database_upgraded_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    make_old_db(path)
    eng = store.engine(f"sqlite:///{path}")
    with eng.connect() as conn:
        calls = [dict(r._mapping) for r in conn.execute(sa.select(store.calls).order_by("id"))]
        prices = [dict(r._mapping) for r in conn.execute(sa.select(store.prices))]
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert version == store.head()
    assert len(calls) == 2
    first = calls[0]
    for key, value in CALL.items():
        if key == "user":
            assert first["user_id"] == value
        elif key == "started_at":
            assert first[key].replace(tzinfo=UTC) == value
        else:
            assert first[key] == value, key
    assert calls[1]["user_id"] == "bob" and calls[1]["cost_usd"] is None
    assert first["comparison_id"] is None and first["heartbeat_at"] is None
    assert prices == [dict(id=1, user_id="alice@example.com", endpoint="*", model="m",
                           input_per_mtok=Decimal("1.5"), cached_input_per_mtok=None,
                           output_per_mtok=Decimal("6"), currency="USD")]
    assert store.get_preference("bob", "last_model", eng=eng) == {"model": "llama3"}
    # The migrated table takes the new statuses and the upsert's unique key still holds.
    store.set_preference("bob", "last_model", {"model": "qwen3"}, eng=eng)
    assert store.get_preference("bob", "last_model", eng=eng) == {"model": "qwen3"}


def test_migrated_schema_equals_metadata(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    make_old_db(path)
    eng = store.engine(f"sqlite:///{path}")
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.metadata)
    assert diff == []


def test_empty_database_created_and_stamped_head(tmp_path: Path) -> None:
    eng = store.engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() \
            == store.head()
        assert compare_metadata(MigrationContext.configure(conn), store.metadata) == []


PROCESS = textwrap.dedent("""
    import logging, sys, time
    from core import store
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # alembic's log: stderr
    url = sys.argv[1]
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    eng = store.engine(url)
    with eng.connect() as conn:
        n = conn.exec_driver_sql("SELECT count(*) FROM calls").scalar()
        v = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    print(n, v)
""")


def test_two_processes_start_at_once_on_an_old_database(tmp_path: Path) -> None:
    import time

    path = tmp_path / "old.sqlite3"
    make_old_db(path)
    url = f"sqlite:///{path}"
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, url, start], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=WAIT_S) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert out.split() == ["2", store.head()]
    # Migrated once: exactly one process ran the upgrade; the other waited and saw head.
    log = "".join(err for _, err in outs)
    assert log.count("Running upgrade 0001 -> 0002") == 1, log
    eng = store.engine(url)
    with eng.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.calls)).scalar() == 2
        assert compare_metadata(MigrationContext.configure(conn), store.metadata) == []
