"""One queue for every write that must not be lost: call-log rows, saved replies, compare answers.

A write is a function of a connection, run in one transaction on the queue's one writer thread
(one per process, so the process never competes with itself for SQLite's write lock). Writes
to one database are made in the order they were submitted. A write the database refuses for a
passing reason (`transient`: SQLite's "database is locked" or busy) is tried again with
backoff; after RETRY_WINDOW_S of trying it is still kept in memory and tried until it is
written or the process exits, and `unsaved()` counts it so a page can say "not saved yet".

Each write carries a key made by the app. Its work must be idempotent under that key (a
compare-and-set on the row's state, or an insert keyed by an app-made id), because a
transaction that failed on a dropped connection may have committed all the same. Submitting
a key that is still waiting returns the write already waiting, never a second one.

    pending = writes.submit("answer:<key>", work, conversation_id=cid)  # from any thread
    pending.wait()                         # True once written (or failed for good)
    saved = writes.write("reply:<key>", work)  # the same, waiting; NotSavedYet past the window
    writes.unsaved(conversation_id=cid)    # how many of its writes are "not saved yet"
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from core import store

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a write is retried before it counts as "not saved yet" (it is still kept and
# retried after that). Tests shorten it.
RETRY_WINDOW_S = 300.0
# Pauses between attempts of a failing write; then BACKOFF_S[-1] each time. SQLite itself
# waits up to its busy_timeout (5 s) inside each attempt.
BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
# How often a waiter looks whether its write became "not saved yet".
_LOOK_S = 0.1


class NotSavedYet(RuntimeError):
    """The write was retried for RETRY_WINDOW_S without success. It is still kept in memory and
    will be made when the database lets it (while this process runs): `pending` waits for it."""

    def __init__(self, pending: Pending[Any]) -> None:
        super().__init__(f"{pending.what or 'write'} {pending.key!r} not saved yet")
        self.pending = pending


def transient(exc: BaseException) -> bool:
    """Whether a write that failed with `exc` may succeed if tried again.

    SQLite says "database is locked" (or busy) when another writer holds the lock past its
    busy_timeout. Connection errors of a database server belong here too, once the work they
    interrupt is known to be idempotent (it is: every write is keyed).
    """
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
        return "locked" in text or "busy" in text
    return False


class Pending(Generic[T]):
    """A submitted write: whether it is written, its result, whether it is "not saved yet"."""

    def __init__(self, key: str, what: str, conversation_id: str | None,
                 comparison_id: str | None) -> None:
        self.key = key
        self.what = what
        self.conversation_id = conversation_id
        self.comparison_id = comparison_id
        self.submitted = time.monotonic()
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # a waiter's cancel never drops the write
        self._lane: _Lane | None = None

    def done(self) -> bool:
        """Written, or failed for good (`result()` raises the error)."""
        return self.future.done()

    @property
    def unsaved(self) -> bool:
        """Waiting, and retried for RETRY_WINDOW_S already (itself, or the write before it)."""
        if self.future.done():
            return False
        now = time.monotonic()
        lane = self._lane
        failing = lane.failing_since if lane is not None else None
        return (now - self.submitted >= RETRY_WINDOW_S
                or (failing is not None and now - failing >= RETRY_WINDOW_S))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the write is done (True), or "not saved yet" or `timeout` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self.done()
            try:
                self.future.exception(timeout=_LOOK_S if left is None else min(_LOOK_S, left))
                return True
            except concurrent.futures.TimeoutError:
                if self.unsaved:
                    return False

    async def settled(self) -> bool:
        """`wait()` for the call loop: True once done, False once "not saved yet"."""
        waiting = asyncio.wrap_future(self.future)
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=_LOOK_S)
            if not waiting.done() and self.unsaved:
                return False
        return True

    def result(self, timeout: float | None = None) -> T:
        """The work's return value once written; its error if it failed for good."""
        return self.future.result(timeout)


@dataclass
class _Item:
    pending: Pending[Any]
    work: Callable[[Connection], Any]
    eng: Engine | None
    keep: bool
    attempts: int = 0


@dataclass
class _Lane:
    """The writes of one database, in order."""

    items: deque[_Item] = field(default_factory=deque)
    next_try: float = 0.0
    failing_since: float | None = None  # when the current run of failures began


@dataclass(frozen=True)
class Backlog:
    """The writes waiting in this process and how many of them are "not saved yet"."""

    waiting: int
    unsaved: int


_cond = threading.Condition()
_lanes: dict[Engine | None, _Lane] = {}
_waiting: dict[str, Pending[Any]] = {}
_writer: threading.Thread | None = None


def submit(key: str, work: Callable[[Connection], T], *, eng: Engine | None = None,
           what: str = "", conversation_id: str | None = None,
           comparison_id: str | None = None, keep: bool = True) -> Pending[T]:
    """Queue `work(conn)` to run in one transaction on `eng` (default: the app's database,
    resolved on the writer thread); returns at once, from any thread.

    `key` is made by the app and names the write; if a write with that key is still waiting,
    it is returned instead of queuing a second one. `keep=False` makes a write that may be
    dropped (a heartbeat: the next one follows): it is tried once, after the writes before it.
    """
    with _cond:
        found = _waiting.get(key)
        if found is not None:
            return found
        pending: Pending[T] = Pending(key, what, conversation_id, comparison_id)
        lane = _lanes.setdefault(eng, _Lane())
        pending._lane = lane
        lane.items.append(_Item(pending, work, eng, keep))
        _waiting[key] = pending
        _start()
        _cond.notify()
    return pending


def write(key: str, work: Callable[[Connection], T], *, eng: Engine | None = None,
          what: str = "", conversation_id: str | None = None,
          comparison_id: str | None = None) -> T:
    """`submit` and wait: the work's result once written, its error if it failed for good, or
    NotSavedYet when it has been retried for RETRY_WINDOW_S (it stays queued)."""
    if threading.current_thread() is _writer:
        raise RuntimeError("a write cannot wait for the write queue from the writer thread")
    pending = submit(key, work, eng=eng, what=what, conversation_id=conversation_id,
                     comparison_id=comparison_id)
    if not pending.wait():
        raise NotSavedYet(pending)
    return pending.result()


def unsaved(*, conversation_id: str | None = None, comparison_id: str | None = None) -> int:
    """How many writes are "not saved yet" (retried for RETRY_WINDOW_S): all of them, or
    those of one conversation or comparison."""
    with _cond:
        found = list(_waiting.values())
    return sum(1 for p in found if p.unsaved
               and (conversation_id is None or p.conversation_id == conversation_id)
               and (comparison_id is None or p.comparison_id == comparison_id))


def backlog() -> Backlog:
    """The writes waiting in this process, and how many are "not saved yet"."""
    with _cond:
        found = list(_waiting.values())
    return Backlog(len(found), sum(1 for p in found if p.unsaved))


def flush(timeout: float | None = None) -> bool:
    """Wait until every write submitted so far is done; False if `timeout` passed first."""
    with _cond:
        found = list(_waiting.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    for pending in found:
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        try:
            pending.future.exception(timeout=left)
        except concurrent.futures.TimeoutError:
            return False
    return True


# -- the writer thread ---------------------------------------------------------------------


def _start() -> None:
    global _writer
    if _writer is None or not _writer.is_alive():
        _writer = threading.Thread(target=_serve, name="owngpt-writes", daemon=True)
        _writer.start()


def _serve() -> None:
    while True:
        with _cond:
            lane, item = _next()
        _attempt(lane, item)


def _next() -> tuple[_Lane, _Item]:
    """The due lane whose first write waited longest (called holding _cond)."""
    while True:
        now = time.monotonic()
        due = [lane for lane in _lanes.values() if lane.items and lane.next_try <= now]
        if due:
            lane = min(due, key=lambda lane: lane.items[0].pending.submitted)
            return lane, lane.items[0]
        later = [lane.next_try for lane in _lanes.values() if lane.items]
        _cond.wait(min(later) - now if later else None)


def _attempt(lane: _Lane, item: _Item) -> None:
    try:
        with (item.eng or store.engine()).begin() as conn:
            result = item.work(conn)
    except Exception as exc:  # sorted below: retried, dropped or reported
        if transient(exc) and item.keep:
            _failed(lane, item, exc)
            return
        if item.keep:
            log.error("%s %s could not be written: %s", item.pending.what or "write",
                      item.pending.key, exc, exc_info=not transient(exc))
        _finish(lane, item, exc=exc)
        return
    _finish(lane, item, result=result)


def _failed(lane: _Lane, item: _Item, exc: Exception) -> None:
    now = time.monotonic()
    with _cond:
        if lane.failing_since is None:
            lane.failing_since = now
        pause = BACKOFF_S[min(item.attempts, len(BACKOFF_S) - 1)]
        item.attempts += 1
        lane.next_try = now + pause
    if item.attempts == 1:
        log.warning("database busy (%s); %s %s is kept and tried again", exc,
                    item.pending.what or "write", item.pending.key)


def _finish(lane: _Lane, item: _Item, *, result: Any = None,
            exc: BaseException | None = None) -> None:
    with _cond:
        lane.items.popleft()
        if exc is None or not transient(exc):  # the database answered
            lane.failing_since = None
        lane.next_try = 0.0
        if _waiting.get(item.pending.key) is item.pending:
            del _waiting[item.pending.key]
    if exc is None:
        item.pending.future.set_result(result)
    else:
        item.pending.future.set_exception(exc)


@atexit.register
def _drain() -> None:
    # A normal exit gives waiting writes a few seconds; what is left is said in the log.
    if not flush(timeout=3.0):
        left = backlog().waiting
        log.error("%d writes were not saved before the process exited", left)
