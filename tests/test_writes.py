"""The write queue loses nothing: a locked database is waited out, a write is made once, and
what cannot be written yet is kept with a visible "not saved yet" mark until it can."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from core import conversations as convs
from core import store, writes
from core.config import make_endpoint
from core.metering import Call
from core.providers import Message
from core.runner import Run
from tests.conftest import API_KEY, call_rows
from tests.timing import WAIT_S, wait_until

ME = "ana"


class Lock:
    """Another writer (a second process, as SQLite sees it) holding the database's write lock
    until `release()`, or for `hold_s` seconds at most."""

    def __init__(self, eng, hold_s: float = WAIT_S) -> None:
        self.released = threading.Event()
        self._go = threading.Event()
        self._taken = threading.Event()
        self._path = eng.url.database
        self._thread = threading.Thread(target=self._hold, args=(hold_s,), daemon=True)

    def _hold(self, hold_s: float) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        self._taken.set()
        self._go.wait(hold_s)
        conn.execute("COMMIT")
        conn.close()
        self.released.set()

    def take(self) -> Lock:
        self._thread.start()
        assert self._taken.wait(WAIT_S), "the other writer never got the lock"
        return self

    def release(self) -> None:
        self._go.set()
        if self._taken.is_set():
            assert self.released.wait(WAIT_S)


@contextlib.contextmanager
def locked(eng, hold_s: float = WAIT_S) -> Iterator[Lock]:
    lock = Lock(eng, hold_s).take()
    try:
        yield lock
    finally:
        lock.release()


def endpoint(server):
    return make_endpoint("Fake", "custom", base_url=server.url, api_key=API_KEY, source="env")


def messages(db, cid: str) -> list[tuple[str, str, int | None]]:
    with db.connect() as conn:
        return [(r.role, r.text, r.call_id) for r in conn.execute(
            select(store.messages).where(store.messages.c.conversation_id == cid)
            .order_by(store.messages.c.id))]


def question(db, user: str = ME) -> tuple[str, convs.ChatMessage]:
    conv = convs.create(user, endpoint="Fake", model="gpt-4o-mini", eng=db)
    asked, _ = convs.add_message(user, conv.id, convs.ChatMessage("user", "Hello there"),
                                 parent_id=None, seq=conv.seq, eng=db)
    return conv.id, asked


def chat_turn(db, server, cid: str, asked: convs.ChatMessage, before_save=None) -> Run:
    """The chat page's turn without the page: a metered call whose worker saves the reply."""
    call = Call(endpoint(server), "gpt-4o-mini", [Message("user", asked.text)], user_id=ME,
                conversation_id=cid)

    def save(call: Call) -> None:
        if before_save is not None:
            before_save()
        reply = convs.ChatMessage("assistant", call.text, status=call.status,
                                  call_id=call.row_id, model=call.model)
        with contextlib.suppress(writes.NotSavedYet):  # kept in the queue; the page says so
            convs.save_reply(ME, cid, reply, parent_id=asked.id, key=call.key)

    return Run([call], on_end=save).start()


def test_a_write_is_made_in_order_and_a_waiting_key_is_not_queued_twice(db):
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE seen (n INTEGER)"))
    with locked(db) as lock:
        first = writes.submit("k-1", lambda c: c.execute(text("INSERT INTO seen VALUES (1)")),
                              eng=db)
        again = writes.submit("k-1", lambda c: c.execute(text("INSERT INTO seen VALUES (9)")),
                              eng=db)
        second = writes.submit("k-2", lambda c: c.execute(text("INSERT INTO seen VALUES (2)")),
                               eng=db)
        assert again is first and not first.done()
        assert writes.backlog().waiting == 2
        lock.release()
        assert second.wait(WAIT_S) and first.done()
    with db.connect() as conn:
        assert conn.execute(text("SELECT n FROM seen ORDER BY rowid")).scalars().all() == [1, 2]
    assert writes.backlog() == writes.Backlog(0, 0)


def test_a_write_that_fails_for_good_is_reported_and_never_retried(db):
    tries = []

    def broken(conn):
        tries.append(1)
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    pending = writes.submit("broken", broken, eng=db)
    assert pending.wait(WAIT_S)
    with pytest.raises(OperationalError):
        pending.result()
    assert tries == [1] and writes.backlog().waiting == 0


def test_a_reply_saved_while_another_writer_holds_the_lock_for_8_s_is_saved_once(
        db, openai_server):
    cid, asked = question(db)
    lock = Lock(db, hold_s=8.0)  # the fault: a writer that takes the lock as the save begins
    run = chat_turn(db, openai_server, cid, asked, before_save=lock.take)
    try:
        assert run.wait(WAIT_S)
        assert lock.released.is_set()  # the save waited for the lock, then was made
    finally:
        lock.release()
    call = run.calls[0]
    [row] = call_rows(db)
    assert row["status"] == "ok" and row["call_key"] == call.key
    assert messages(db, cid) == [("user", "Hello there", None),
                                 ("assistant", call.text, row["id"])]


def test_past_the_retry_window_a_reply_is_not_saved_yet_then_saved_when_the_lock_goes(
        db, openai_server, monkeypatch):
    monkeypatch.setattr(writes, "RETRY_WINDOW_S", 0.5)  # five minutes in the app
    cid, asked = question(db)
    with locked(db) as lock:
        run = chat_turn(db, openai_server, cid, asked)
        assert run.wait(WAIT_S)  # the turn is over: its row and reply are kept, not lost
        call = run.calls[0]
        assert call.status == "ok" and call.row_id is None
        assert writes.unsaved(conversation_id=cid) == 3  # the row, its completion, the reply
        assert writes.unsaved(conversation_id="another") == 0
        assert messages(db, cid) == [("user", "Hello there", None)]
        lock.release()
        wait_until(lambda: len(messages(db, cid)) == 2, what="the reply, saved after the lock")
    assert writes.flush(WAIT_S) and writes.unsaved(conversation_id=cid) == 0
    [row] = call_rows(db)
    assert row["status"] == "ok" and row["output_tokens"] == 12
    assert messages(db, cid)[1] == ("assistant", call.text, row["id"])  # linked by its key


def test_the_chat_page_says_not_saved_yet(db, monkeypatch):
    from tests.test_chat_page import app
    monkeypatch.setattr(writes, "RETRY_WINDOW_S", 0.0)
    cid, _ = question(db, "local")  # the page's user without sign-in
    busy = threading.Event()

    def refused(conn):  # a database that stays busy until the test lets it go
        if not busy.is_set():
            raise OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))

    pending = writes.submit("reply:test", refused, conversation_id=cid)
    try:
        at = app(c=cid).run()
        assert any("Not saved yet" in w.value for w in at.warning), [w.value for w in at.warning]
        zh = app("zh", c=cid).run()
        assert any("尚未保存" in w.value for w in zh.warning)
    finally:
        busy.set()
        assert writes.flush(WAIT_S) and pending.done()
    at = app(c=cid).run()
    assert not any("Not saved yet" in w.value for w in at.warning)
