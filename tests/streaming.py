"""What the adapter, runner and ledger tests share: draining a reply, cancelling it."""

from __future__ import annotations

from typing import Any

from core import aio
from tests.timing import WAIT_S, wait_until


async def collect(reply: Any) -> str:
    """Iterate a reply on the call loop; the text it yielded."""
    return "".join([delta async for delta in reply])


def drain(reply: Any) -> str:
    """Iterate the reply to its end on the app's call loop; the text it yielded."""
    return aio.run(collect(reply), timeout=WAIT_S)


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
    assert server.wait_for_hangups(1, timeout=WAIT_S), "the server never saw the hang-up"
    wait_until(lambda: reply.total is not None, what="the reply to settle")
    assert reply.text == "" if slow else reply.text.startswith("Echo")
    assert not reply.complete
