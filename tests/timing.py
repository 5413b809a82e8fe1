"""The suite's one setting for waiting: every deadline in the tests comes from here.

A test waits for what should happen (a row, a hang-up, a text on screen) and fails only when
it never does. The deadline is generous because CI runs right after a session, often on a
loaded machine; `OWNGPT_TEST_WAIT_SCALE` multiplies it for a slower machine still. How fast
something happens is measured in bench/, never asserted here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

SCALE = float(os.environ.get("OWNGPT_TEST_WAIT_SCALE") or 1)
WAIT_S = 30.0 * SCALE  # "should happen": the deadline of every wait in the suite
WAIT_MS = int(WAIT_S * 1000)  # the same, for Playwright's expect and page calls
POLL_S = 0.01  # how often a wait looks again; not a deadline
# A fault that lasts this long is never sat out by a test: a request held this long that ends
# within WAIT_S was ended by the app (a Stop, a cancel), not by the server finishing.
NEVER_S = 10 * WAIT_S


def wait_until(check: Callable[[], T], what: str = "condition", timeout: float = WAIT_S) -> T:
    """Poll `check` until it returns something true, and return it; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}, in vain")
        time.sleep(POLL_S)
    return found
