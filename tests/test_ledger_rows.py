"""The call log loses no call: a row from the moment the request goes out, a heartbeat while
it runs, `interrupted` when its process died, never for a live call of another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from core import metering, store
from core.config import make_endpoint
from core.metering import Call, mark_interrupted
from core.pricing import Price, set_price
from core.providers import Message
from core.runner import Run
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.timing import wait_until

ROOT = Path(__file__).resolve().parents[1]
HELLO = [Message("user", "Hello, how are you today?")]


def endpoint(server):
    return make_endpoint("Fake", "custom", base_url=server.url, api_key=API_KEY, source="env")


def running_row(db):
    rows = [r for r in call_rows(db) if r["status"] == "running"]
    return rows[-1] if rows else None


@pytest.fixture
def streaming_server():
    """Streams 1,000 tokens at 50 a second: 20 s, far longer than any test waits."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=1000, rate=50, slow_first_token=30) as server:
        yield server


def test_the_row_is_running_while_the_request_is_out_then_completed_once(db, openai_server):
    call = Call(endpoint(openai_server), "fault-slow", HELLO, user_id="ana")
    run = Run([call]).start()
    row = wait_until(lambda: running_row(db), what="the running row")
    assert row["input_tokens"] > 0 and row["estimated"] and row["output_tokens"] == 0
    assert row["heartbeat_at"] is not None and row["ended_at"] is None
    assert run.wait(10)
    [done] = call_rows(db)
    assert done["id"] == row["id"] == call.row_id
    assert done["status"] == "ok" and not done["estimated"] and done["ended_at"] is not None
    assert done["server_model"] == "fault-slow" and done["finish_reason"] == "stop"
    assert done["ttft_s"] > 1.0  # the slow first token, timed from when the request went out


def test_the_heartbeat_keeps_a_running_row_fresh_with_the_output_so_far(
        db, streaming_server, monkeypatch):
    monkeypatch.setattr(metering, "HEARTBEAT_S", 0.05)
    run = Run([Call(endpoint(streaming_server), "gpt-4o-mini", HELLO, user_id="ana")]).start()
    try:
        first = wait_until(lambda: (r := running_row(db)) and r["output_chars"] > 0 and r,
                           what="a heartbeat with output")
        later = wait_until(lambda: (r := running_row(db)) and
                           r["output_chars"] > first["output_chars"] and r,
                           what="a later heartbeat")
        assert later["heartbeat_at"] > first["heartbeat_at"] >= first["started_at"]
        assert later["output_tokens"] > 0
    finally:
        run.stop()
    assert run.wait(1)
    assert call_rows(db)[-1]["status"] == "stopped"


def test_only_rows_whose_heartbeat_stopped_become_interrupted(db, openai_server, monkeypatch):
    monkeypatch.setattr(metering, "HEARTBEAT_S", 0.05)
    old = datetime.now(UTC) - timedelta(minutes=5)
    with db.begin() as conn:  # a call of a process that died five minutes ago
        conn.execute(store.calls.insert(), {
            "user_id": "bo", "started_at": old, "heartbeat_at": old, "source": "chat",
            "endpoint": "Gone", "provider": "openai", "base_url": "http://x", "model": "m",
            "status": "running", "input_tokens": 7, "output_tokens": 3, "output_chars": 12})
    run = Run([Call(endpoint(openai_server), "fault-slow", HELLO, user_id="ana")]).start()
    wait_until(lambda: len(call_rows(db)) == 2, what="the live call's row")
    assert mark_interrupted(db) == 1
    # The live call is waiting for its first token: no chunk comes, the heartbeat still does.
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        assert mark_interrupted(db, stale_after_s=0.3) == 0
        time.sleep(0.05)
    assert run.wait(10)
    dead, live = call_rows(db)
    assert (dead["status"], dead["input_tokens"], dead["output_tokens"]) == ("interrupted", 7, 3)
    assert dead["ended_at"] == dead["heartbeat_at"]
    assert live["status"] == "ok"


# A second app process: one call on the given server, heartbeats every 0.1 s.
CHILD = textwrap.dedent("""
    import sys, time
    from core import metering
    from core.config import make_endpoint
    from core.metering import Call
    from core.providers import Message
    from core.runner import Run

    metering.HEARTBEAT_S = 0.1
    url, key, model = sys.argv[1:4]
    ep = make_endpoint("Fake", "custom", base_url=url, api_key=key, source="env")
    run = Run([Call(ep, model, [Message("user", "Hello, how are you today?")],
                    user_id="ana")]).start()
    run.wait(60)
    print(run.calls[0].status, flush=True)
""")


def child(server, model: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, server.url, API_KEY, model], cwd=ROOT,
                            env={**os.environ}, stdout=subprocess.PIPE, text=True)


def test_a_live_call_of_another_process_is_never_marked(db, openai_server):
    openai_server.slow_first_token = 3.0
    proc = child(openai_server, "fault-slow")
    try:
        wait_until(lambda: running_row(db), timeout=20, what="the other process's row")
        deadline = time.monotonic() + 1.5  # past the staleness asked for below
        while time.monotonic() < deadline:
            assert mark_interrupted(db, stale_after_s=1.0) == 0
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=20)
    finally:
        openai_server.slow_first_token = 1.5
        proc.kill()
    assert out.strip() == "ok"
    assert [r["status"] for r in call_rows(db)] == ["ok"]


def test_a_process_killed_mid_answer_leaves_one_interrupted_row(db, streaming_server):
    proc = child(streaming_server, "gpt-4o-mini")
    try:
        beat = wait_until(lambda: (r := running_row(db)) and r["output_chars"] > 0 and r,
                          timeout=20, what="a heartbeat with output from the other process")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert streaming_server.wait_for_hangups(1, timeout=5)  # the server stops generating
    wait_until(lambda: mark_interrupted(db, stale_after_s=0.5), timeout=5,
               what="the dead call's heartbeat to go stale")
    [row] = call_rows(db)
    assert row["status"] == "interrupted" and row["id"] == beat["id"]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["output_chars"] >= beat["output_chars"] > 0
    assert row["ended_at"] == row["heartbeat_at"]
    assert mark_interrupted(db, stale_after_s=0.5) == 0  # once only


def test_a_stopped_answer_is_counted_and_priced(db, streaming_server):
    set_price("*", "gpt-4o-mini", Price(Decimal(1), Decimal(2)))
    call = Call(endpoint(streaming_server), "gpt-4o-mini", HELLO, user_id="ana")
    run = Run([call]).start()
    wait_until(lambda: len(call.text) > 40, what="part of the answer")
    run.stop()
    assert run.wait(1)
    [row] = call_rows(db)
    assert row["status"] == "stopped" and row["estimated"]
    assert row["output_tokens"] == call.usage.output_tokens > 0
    assert call.cost is not None and call.cost > 0 and row["cost_usd"] == call.cost


def test_a_database_that_cannot_be_written_never_costs_the_answer(tmp_path, openai_server):
    broken = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.sqlite3'}")
    call = Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana", eng=broken)
    assert Run([call]).start().wait(10)
    assert call.status == "ok" and call.text.startswith("Echo: Hello")
    assert call.row_id is None and call.usage.output_tokens == 12


def test_an_error_row_keeps_what_the_server_said(db, openai_server):
    call = Call(endpoint(openai_server), "fault-429", HELLO, user_id="ana").run_sync()
    [row] = call_rows(db)
    assert (row["status"], row["error_kind"], row["http_status"]) == ("error", "rate_limited", 429)
    assert row["request_id"].startswith("req_") and row["request_id"] == call.error.request_id
    assert row["ended_at"] is not None and row["output_chars"] == 0


def test_a_database_locked_for_a_while_delays_the_row_not_the_answer(db, openai_server):
    holder = db.raw_connection()
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    call = Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana")
    run = Run([call]).start()
    try:
        wait_until(lambda: call.ended, what="the answer, despite the lock")
        assert call.status == "ok" and not run.finished  # the row still waits for the lock
    finally:
        holder.rollback()
        holder.close()
    assert run.wait(10)
    [row] = call_rows(db)
    assert row["status"] == "ok" and row["output_tokens"] == 12
