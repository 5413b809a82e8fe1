"""One event loop per process, in a thread of its own, for every model call.

The async clients (`openai.AsyncOpenAI`, `ollama.AsyncClient`) keep connection pools bound to
the loop they first ran on, and the adapters that hold them are cached and shared across
sessions (`providers.provider_for`). So every call runs on this one loop, whichever script
thread asks; a call is stopped by cancelling its future from any thread, which the loop turns
into a `CancelledError` inside the request: the connection is dropped at once, even while the
server has not sent its first byte.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's call loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="owngpt-calls", daemon=True).start()
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run a coroutine on the call loop; `.cancel()` on the result stops it from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the call loop and wait for its result (for sync callers)."""
    return submit(coro).result(timeout)


async def through_cancel(future: asyncio.Future[T]) -> tuple[T, bool]:
    """Await a future to its end even if the awaiting task is cancelled meanwhile (a row's
    write, a conversation's save); returns its result and whether a cancel came."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    return future.result(), cancelled
