"""How long the hourly rollup's first build holds SQLite's write lock at a time.

    .venv/bin/python -m bench.fill_calls /tmp/usage_1m.sqlite3     # 1,000,000 rows, once
    .venv/bin/python -m bench.rollup_hold /tmp/usage_1m.sqlite3

The user's rollup is forgotten first (`store.forget_rollup`), so every run is a first build,
over the ~950,000 calls of the user "local". Two figures: the longest time one piece held the
write lock, measured inside `core.usage.roll_up` (from the statement that takes the lock to
its commit), and, from outside, the longest a second process waited for the lock while the
build ran: it takes and releases the lock (`BEGIN IMMEDIATE; COMMIT`) every 5 ms, as another
app process writing its call rows would. Goal (issue 15): no hold longer than 0.5 s; before,
the first build was one transaction holding the lock for 3-5 s.

It is a benchmark, not a test: it prints figures and asserts nothing. It takes about as long
as the build (a few seconds; more on a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from core import store, usage  # noqa: E402

GOAL_S = 0.5
USER = "local"
# Another writer: takes and releases the write lock every 5 ms until its stdin closes; prints
# the longest and the median wait for the lock, and how many times it got it.
PROBE = """
import sqlite3, statistics, sys, threading, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
waits = []
while not done.is_set():
    began = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    waits.append(time.perf_counter() - began)
    conn.execute("COMMIT")
    time.sleep(0.005)
print(max(waits), statistics.median(waits), len(waits), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_hold")
    parser.add_argument("path", type=Path, help="a call log made by bench.fill_calls")
    args = parser.parse_args()
    if not args.path.exists():
        parser.error(f"{args.path} does not exist: make it with bench.fill_calls first")
    eng = store.engine(f"sqlite:///{args.path}")
    with eng.begin() as conn:
        store.forget_rollup(conn, USER)
        calls = conn.execute(select(func.count()).where(store.calls.c.user_id == USER)
                             ).scalar_one()
    print(f"rollup hold, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}; first build over {calls:,} calls")
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(args.path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert probe.stdin is not None and probe.stdout is not None
    assert probe.stdout.readline().strip() == "ready"
    holds: list[float] = []
    began = time.perf_counter()
    usage.roll_up(USER, eng=eng, holds=holds)
    total = time.perf_counter() - began
    probe.stdin.close()
    longest_wait, median_wait, turns = (float(x) for x in probe.stdout.readline().split())
    probe.wait(30)
    print(f"built in {total:.2f} s, {len(holds)} pieces; write lock held per piece: "
          f"median {statistics.median(holds) * 1000:.0f} ms, longest {max(holds) * 1000:.0f} ms")
    print(f"another writer meanwhile got the lock {turns:.0f} times; its wait: median "
          f"{median_wait * 1000:.1f} ms, longest {longest_wait * 1000:.0f} ms")
    verdict = "PASS" if max(holds) <= GOAL_S else "MISS"
    print(f"longest hold {max(holds) * 1000:.0f} ms (goal <= {GOAL_S * 1000:.0f} ms): {verdict}")


if __name__ == "__main__":
    main()
