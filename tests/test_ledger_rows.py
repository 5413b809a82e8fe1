"""The call log loses no call: a row from the moment the request goes out, a heartbeat while
it runs, `interrupted` when its process died, never for a live call of another process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, select

from core import metering, store, usage, writes
from core.budget import set_budget
from core.config import make_endpoint
from core.metering import Call, mark_interrupted
from core.pricing import Price, set_user_price
from core.providers import Message
from core.runner import Run
from tests.conftest import API_KEY, call_rows
from tests.fakes import FakeOpenAIServer
from tests.timing import WAIT_S, wait_until

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


# A second app process: one call on the given server, heartbeats every 0.1 s, with a fault:
# "skewed" (its clock ten minutes slow), "budget" (the budget's read never answers: it says
# "checking" and hangs there), "saving" (says "answered" when the answer is in, before its
# writes; the test holds the lock so they wait). With a conversation id, the reply is saved
# as the chat page does.
CHILD = textwrap.dedent("""
    import sys, threading, time
    from datetime import datetime, timedelta
    from core import conversations, metering, store
    from core.config import make_endpoint
    from core.metering import Call
    from core.providers import Message
    from core.runner import Run

    metering.HEARTBEAT_S = 0.1
    url, key, model, fault, cid, parent = (sys.argv[1:] + ["", "", "", ""])[:6]
    if fault == "skewed":
        class Slow(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.now(tz) - timedelta(minutes=10)
        metering.datetime = Slow
    if fault == "budget":
        from sqlalchemy import event
        main = threading.current_thread()
        def hang(conn, cursor, statement, *rest):
            if threading.current_thread() is not main and statement.lstrip().startswith("SELECT"):
                print("checking", flush=True)
                time.sleep(600)
        event.listen(store.engine(), "before_cursor_execute", hang)
    def save(call):
        reply = conversations.ChatMessage("assistant", call.text, status=call.status,
                                          call_id=call.row_id, model=call.model)
        conversations.save_reply("ana", cid, reply, parent_id=int(parent), key=call.key)
    ep = make_endpoint("Fake", "custom", base_url=url, api_key=key, source="env")
    call = Call(ep, model, [Message("user", "Hello, how are you today?")], user_id="ana",
                conversation_id=cid or None)
    run = Run([call], on_end=save if cid else None).start()
    if fault == "saving":
        while not call.ended:
            time.sleep(0.01)
        print("answered", flush=True)
    run.wait(60)
    print(run.calls[0].status, flush=True)
""")


def child(server, model: str, fault: str = "", cid: str = "", parent: int | None = None
          ) -> subprocess.Popen:
    args = [server.url, API_KEY, model, fault, cid, "" if parent is None else str(parent)]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT,
                            env={**os.environ}, stdout=subprocess.PIPE, text=True)


def said(proc: subprocess.Popen) -> list[str]:
    """The lines the child prints, as they come (read on a thread of their own)."""
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_live_call_of_another_process_is_never_marked(db, openai_server):
    # Its clock is ten minutes slow and it beats every 0.1 s; staleness is 5 s, watched for
    # longer than that: only the database's clock keeps it alive here.
    openai_server.slow_first_token = 10.0
    proc = child(openai_server, "fault-slow", "skewed")
    try:
        row = wait_until(lambda: running_row(db), what="the other process's row")
        assert row["started_at"] < datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=9)
        deadline = time.monotonic() + 5.5  # past the staleness asked for below
        while time.monotonic() < deadline:
            assert mark_interrupted(db, stale_after_s=5.0) == 0
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        openai_server.slow_first_token = 1.5
        proc.kill()
    assert out.strip() == "ok"
    assert [r["status"] for r in call_rows(db)] == ["ok"]


def test_a_process_killed_during_the_budget_check_sent_nothing_and_left_no_row(
        db, openai_server):
    before = len(openai_server.requests)
    proc = child(openai_server, "gpt-4o-mini", "budget")
    try:
        lines = said(proc)
        wait_until(lambda: "checking" in lines, what="the other process in its budget check")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
    assert openai_server.requests[before:] == [] and call_rows(db) == []
    assert mark_interrupted(db, stale_after_s=0.0) == 0
    # The database is left as it was: the next call goes out and is logged.
    call = Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana").run_sync(WAIT_S)
    assert call.status == "ok" and [r["status"] for r in call_rows(db)] == ["ok"]


def test_a_process_killed_between_the_answer_and_its_writes_leaves_one_interrupted_row(
        db, openai_server):
    from tests.test_writes import Lock, messages, question
    cid, asked = question(db)
    proc = child(openai_server, "gpt-4o-mini", "saving", cid, asked.id)
    lock = None
    try:
        lines = said(proc)
        wait_until(lambda: running_row(db), what="the other process's row")
        lock = Lock(db).take()  # its completion and reply now wait in its write queue
        wait_until(lambda: "answered" in lines, what="the other process's answer")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        if lock is not None:
            lock.release()
    wait_until(lambda: mark_interrupted(db, stale_after_s=0.5), what="its row to go stale")
    [row] = call_rows(db)
    assert row["status"] == "interrupted" and row["input_tokens"] > 0
    assert messages(db, cid) == [("user", "Hello there", None)]  # no half-saved reply


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
    set_user_price("ana", "*", "gpt-4o-mini", Price(Decimal(1), Decimal(2)))
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


@contextlib.contextmanager
def slow_budget_read(eng):
    """A database that answers the budget's read only when let go (a stalled disk, a server
    far away): the first read of a thread other than the test's blocks until `release`."""
    entered, release = threading.Event(), threading.Event()
    armed, test_thread = [True], threading.current_thread()

    def stall(conn, cursor, statement, *rest) -> None:
        if (armed[0] and threading.current_thread() is not test_thread
                and statement.lstrip().startswith("SELECT")):
            armed[0] = False
            entered.set()
            release.wait(WAIT_S)

    event.listen(eng, "before_cursor_execute", stall)
    try:
        yield entered, release
    finally:
        release.set()
        event.remove(eng, "before_cursor_execute", stall)


def test_a_stop_during_the_budget_check_is_honoured_and_nothing_goes_out(
        db, openai_server, monkeypatch):
    monkeypatch.setattr(metering, "BUDGET_DEADLINE_S", WAIT_S, raising=False)
    set_budget("ana", "100", "USD", hard_stop=True, eng=db)
    before = len(openai_server.requests)
    with slow_budget_read(db) as (entered, _):
        call = Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana")
        run = Run([call]).start()
        assert entered.wait(WAIT_S)
        run.stop()
        assert run.wait(WAIT_S)  # while the read still hangs
    assert call.status == "stopped" and call.text == ""
    assert openai_server.requests[before:] == [] and call_rows(db) == []


def test_a_budget_read_past_its_deadline_fails_closed_only_under_a_hard_stop(
        db, openai_server, monkeypatch):
    monkeypatch.setattr(metering, "BUDGET_DEADLINE_S", 0.2)
    before = len(openai_server.requests)
    set_budget("ana", "100", "USD", hard_stop=True, eng=db)
    with slow_budget_read(db):
        refused = Call(endpoint(openai_server), "gpt-4o-mini", HELLO,
                       user_id="ana").run_sync(WAIT_S)
    assert refused.status == "error" and refused.error.hint == "error.budget_unavailable"
    assert openai_server.requests[before:] == []
    set_budget("ana", "100", "USD", hard_stop=False, eng=db)
    with slow_budget_read(db):
        sent = Call(endpoint(openai_server), "gpt-4o-mini", HELLO,
                    user_id="ana").run_sync(WAIT_S)
    assert sent.status == "ok" and len(openai_server.requests[before:]) == 1
    assert [(r["status"], r["error_kind"]) for r in call_rows(db)] == [
        ("error", "budget"), ("ok", None)]


def test_a_new_call_goes_out_while_another_writer_holds_the_lock_for_8_s(db, openai_server):
    from tests.test_writes import locked
    before = len(openai_server.requests)
    with locked(db, hold_s=8.0) as lock:
        first = Run([Call(endpoint(openai_server), "gpt-4o-mini", HELLO,
                          user_id="ana")]).start()  # its row waits for the lock
        wait_until(lambda: len(openai_server.requests) > before, what="the first request")
        second = Run([Call(endpoint(openai_server), "gpt-4o-mini", HELLO,
                           user_id="ana")]).start()
        wait_until(lambda: len(openai_server.requests) > before + 1,
                   what="the second request")
        assert not lock.released.is_set()  # it went out while the lock was still held
    assert first.wait(WAIT_S) and second.wait(WAIT_S)
    assert [r["status"] for r in call_rows(db)] == ["ok", "ok"]


def hourly_table(db) -> list[tuple]:
    h = store.calls_hourly.c
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(h.hour, h.endpoint, h.model, h.calls, h.input, h.output, h.cost, h.priced,
                   h.errors).where(h.user_id == "ana").order_by(h.hour, h.model))]


def raw_hours(db) -> list[tuple]:
    raw = usage._hourly_raw("ana", usage.Filters(), db)
    return [(r.hour, r.endpoint, r.model, r.calls, r.input, r.output,
             Decimal(0) if r.cost is None else Decimal(str(r.cost)), r.priced, r.errors)
            for r in raw.sort_values(["hour", "model"]).itertuples()]


def test_a_late_completion_of_an_interrupted_row_is_flagged_and_keeps_the_rollup_exact(
        db, streaming_server, monkeypatch):
    monkeypatch.setattr(metering, "HEARTBEAT_S", 60.0)  # a process too busy to beat
    set_user_price("ana", "*", "gpt-4o-mini", Price(Decimal(1), Decimal(2)))
    call = Call(endpoint(streaming_server), "gpt-4o-mini", HELLO, user_id="ana")
    run = Run([call]).start()
    try:
        wait_until(lambda: running_row(db) and len(call.text) > 20, what="part of the answer")
        # Another process takes it for dead; the usage page, hours later, rolls its hour up.
        wait_until(lambda: mark_interrupted(db, stale_after_s=0.0), what="the row marked")
        usage.roll_up("ana", eng=db, now=datetime.now(UTC) + timedelta(hours=3))
        counted = hourly_table(db)
        assert counted == raw_hours(db)
        assert counted[0][3:6] == (1, call_rows(db)[0]["input_tokens"], 0)
    finally:
        run.stop()  # the slow process ends its call after all
    assert run.wait(WAIT_S)
    [row] = call_rows(db)
    assert row["status"] == "stopped" and row["late"]
    assert row["output_tokens"] == call.usage.output_tokens > 0 and row["cost_usd"] == call.cost
    assert hourly_table(db) == raw_hours(db) != counted  # corrected in the same transaction
    # A row that is over is never completed twice: a second completion changes nothing.
    call.status, call.cost = "error", Decimal(9)
    writes.write("again", call._write_complete)
    assert call_rows(db) == [row] and hourly_table(db) == raw_hours(db)


def test_an_on_time_row_is_not_late(db, openai_server):
    Call(endpoint(openai_server), "gpt-4o-mini", HELLO, user_id="ana").run_sync(WAIT_S)
    [row] = call_rows(db)
    assert row["status"] == "ok" and not row["late"] and len(row["call_key"]) == 32
