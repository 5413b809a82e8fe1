"""Many metered calls at once, one Stop for all: the chat's single answer and compare's panes.

The calls run as tasks on the process's call loop (`core.aio`), each on its own: a slow or
failing call never holds up the others. `stop()` cancels the tasks from any thread, which
drops each request's connection within milliseconds, also before its first token. When a call
ends, `on_end(call)` runs on a worker thread, not the script's: what must be saved is saved
even though a Stop or a rerun ends the script run that started the calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable

from core import aio
from core.metering import Call

log = logging.getLogger(__name__)

# on_end may save a conversation or even make another call (a title): never on the call loop,
# never on the ledger's writer thread, which a nested call's row would wait for.
_on_end_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                     thread_name_prefix="owngpt-on-end")


class Run:
    """N metered calls made at once. `start()` sends them, `stop()` ends them all, `wait()`
    blocks until each has ended and its `on_end` returned; `finished` says whether it has."""

    def __init__(self, calls: Iterable[Call], *, on_end: Callable[[Call], object] | None = None
                 ) -> None:
        self.calls: list[Call] = list(calls)
        self._on_end = on_end
        self._left = len(self.calls)
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        # on_end sees the context of whoever started the run (the script's language for t()).
        self._context = contextvars.copy_context()
        if not self.calls:
            self._finished.set()

    @property
    def finished(self) -> bool:
        """Whether every call has ended and its on_end has returned."""
        return self._finished.is_set()

    def start(self) -> Run:
        """Send every call (from any thread); returns self. A second start does nothing."""
        with self._lock:
            if self._started:
                return self
            self._started = True
        self._context = contextvars.copy_context()
        for call in self.calls:
            aio.submit(self._one(call))
        return self

    def stop(self) -> None:
        """End every call still running (thread-safe, idempotent); each keeps its partial
        answer and ends as stopped. A call stopped before it went out is never sent."""
        for call in self.calls:
            call.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has finished or `timeout` seconds passed; True if finished."""
        return self._finished.wait(timeout)

    async def _one(self, call: Call) -> None:
        try:
            await call.run()
        except asyncio.CancelledError:  # the loop itself is going away; the row is settled
            log.info("call to %s cancelled from outside the run", call.model)
        except Exception:  # a bug of ours must not keep the run from finishing
            log.exception("call to %s failed outside its own error handling", call.model)
        if self._on_end is None:
            self._ended()
            return
        try:  # the worker counts the call as ended itself: no hop back through the loop
            _on_end_pool.submit(self._end, call)
        except RuntimeError:  # the interpreter is shutting down: nothing is left to save to
            self._ended()

    def _end(self, call: Call) -> None:
        assert self._on_end is not None
        try:
            self._context.copy().run(self._on_end, call)
        except Exception:  # one pane's saving failing must not hide the other panes' answers
            log.exception("on_end failed for a call to %s", call.model)
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._finished.set()
