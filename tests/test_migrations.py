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
    # Prices belong to the deployment since 0006: alice's one price is the deployment's.
    assert prices == [dict(id=1, endpoint="*", model="m", input_per_mtok=Decimal("1.5"),
                           cached_input_per_mtok=None, output_per_mtok=Decimal("6"),
                           currency="USD")]
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


def at_0005(path: Path) -> sa.Engine:
    """An old database brought to 0005 only: the per-user prices, rates and budgets of then."""
    from alembic import command

    make_old_db(path)
    eng = sa.create_engine(f"sqlite:///{path}")
    with eng.connect() as conn:
        command.stamp(store._alembic_config(conn), "0001")
        command.upgrade(store._alembic_config(conn), "0005")
        conn.commit()
    return eng


def test_0006_moves_two_users_prices_rates_and_budgets_into_the_deployment(tmp_path):
    path = tmp_path / "two.sqlite3"
    eng = at_0005(path)
    p = sa.table("prices", *(sa.column(n) for n in (
        "user_id", "endpoint", "model", "input_per_mtok", "cached_input_per_mtok",
        "output_per_mtok", "currency")))
    prefs = sa.table("preferences", sa.column("user_id"), sa.column("name"),
                     sa.column("value", sa.JSON))
    with eng.begin() as conn:
        conn.execute(p.delete())
        conn.execute(p.insert(), [
            # Both priced gpt-x: bob's is dearer (8 CNY = $1.00 at his rate of 8 vs $0.50).
            dict(user_id="alice@example.com", endpoint="*", model="gpt-x", input_per_mtok=0.25,
                 cached_input_per_mtok=None, output_per_mtok=0.25, currency="USD"),
            dict(user_id="bob", endpoint="*", model="gpt-x", input_per_mtok=4,
                 cached_input_per_mtok=None, output_per_mtok=4, currency="CNY"),
            # Only alice priced qwen-odd, only bob local-m: both kept.
            dict(user_id="alice@example.com", endpoint="Qwen", model="qwen-odd",
                 input_per_mtok=2, cached_input_per_mtok=1, output_per_mtok=6, currency="CNY"),
            dict(user_id="bob", endpoint="Box", model="local-m", input_per_mtok=0.1,
                 cached_input_per_mtok=None, output_per_mtok=0.2, currency="USD"),
        ])
        conn.execute(prefs.insert(), [
            dict(user_id="bob", name="cny_per_usd", value="8"),
            dict(user_id="alice@example.com", name="budget",
                 value={"amount": "20000", "currency": "CNY", "hard_stop": True}),
            dict(user_id="bob", name="budget",
                 value={"amount": "5", "currency": "USD", "hard_stop": False}),
        ])
    eng.dispose()

    migrated = store.engine(f"sqlite:///{path}")
    with migrated.connect() as conn:
        rows = conn.execute(sa.select(store.prices.c.endpoint, store.prices.c.model,
                                      store.prices.c.input_per_mtok, store.prices.c.currency)
                            .order_by(store.prices.c.model)).all()
        budgets = conn.execute(sa.select(store.budgets).order_by(store.budgets.c.user_id)).all()
        left = conn.execute(sa.select(store.preferences.c.name)).scalars().all()
        assert compare_metadata(MigrationContext.configure(conn), store.metadata) == []
    assert [tuple(r) for r in rows] == [
        ("*", "gpt-x", Decimal(4), "CNY"),  # the dearer of the two, in its own currency
        ("Box", "local-m", Decimal("0.1"), "USD"),
        ("Qwen", "qwen-odd", Decimal(2), "CNY"),
    ]
    # No "local" user here: each person's budget became their own cap, none the deployment's.
    assert [(b.user_id, b.amount, b.currency, b.hard_stop) for b in budgets] == [
        ("alice@example.com", Decimal(20000), "CNY", True), ("bob", Decimal(5), "USD", False)]
    assert "budget" not in left and "cny_per_usd" not in left and "last_model" in left
    from core import pricing

    assert pricing.cny_per_usd(eng=migrated) == Decimal(8)


def test_0006_gives_the_owner_s_budget_and_prices_to_the_deployment(tmp_path):
    path = tmp_path / "owner.sqlite3"
    eng = at_0005(path)
    p = sa.table("prices", *(sa.column(n) for n in (
        "user_id", "endpoint", "model", "input_per_mtok", "output_per_mtok", "currency")))
    prefs = sa.table("preferences", sa.column("user_id"), sa.column("name"),
                     sa.column("value", sa.JSON))
    with eng.begin() as conn:
        conn.execute(p.insert(), [  # "m" of alice is in the old database already
            dict(user_id="local", endpoint="*", model="m", input_per_mtok=0.5,
                 output_per_mtok=1, currency="USD")])
        conn.execute(prefs.insert(), [
            dict(user_id="local", name="budget",
                 value={"amount": "1000", "currency": "CNY", "hard_stop": True}),
            dict(user_id="local", name="cny_per_usd", value="7.2"),
            dict(user_id="ana", name="cny_per_usd", value="9")])
    eng.dispose()
    from core import budget, pricing

    migrated = store.engine(f"sqlite:///{path}")
    assert budget.get_budget(eng=migrated) == budget.Budget(Decimal(1000), "CNY", True)
    assert pricing.own_price("any", "m", eng=migrated) == pricing.Price(Decimal("0.5"),
                                                                        Decimal(1))
    assert pricing.cny_per_usd(eng=migrated) == Decimal("7.2")
