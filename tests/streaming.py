"""What the adapter, runner and ledger tests share: waiting with a deadline, draining a reply."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from core import aio

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `check` until it returns something true, and return it; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    return found


async def collect(reply: Any) -> str:
    """Iterate a reply on the call loop; the text it yielded."""
    return "".join([delta async for delta in reply])


def drain(reply: Any) -> str:
    """Iterate the reply to its end on the app's call loop; the text it yielded."""
    return aio.run(collect(reply), timeout=30)


def assert_cancel_drops_the_connection(server: Any, reply: Any, *, slow: bool) -> None:
    """Cancel the task streaming `reply` (before its first token when `slow`, else after it)
    and check the server saw the hang-up at once and the reply kept what it had."""
    future = aio.submit(collect(reply))
    if slow:
        wait_until(lambda: server.requests, what="the request to arrive")
    else:
        wait_until(lambda: reply.text, what="the first token")
    future.cancel()
    # The server would wait 30 s (or stream 50 s) more had the connection stayed open.
    assert server.wait_for_hangups(1, timeout=2.0), "the server never saw the hang-up"
    wait_until(lambda: reply.total is not None, what="the reply to settle")
    assert reply.text == "" if slow else reply.text.startswith("Echo")
    assert not reply.complete
