"""The call log under load: 50 metered calls at once on one SQLite file.

Each call's row is INSERTed when its request goes out, refreshed by the heartbeat while it
streams, and completed when it ends. Goal (issue 6): 50 complete rows, no "database is
locked" reaching a caller. The calls can be spread over several processes (`--processes`,
default 2), each an app process of its own on the same file, which is where SQLite's one
write lock is contended; within a process the ledger's writer thread takes the writes in
turn. The fake OpenAI server runs in its own process and answers 200 tokens at 100 tokens/s
(2 s), so every call is in flight at the same time and the heartbeat (set to 0.2 s here,
5 s in the app) writes while the others insert and complete.

    .venv/bin/python -m bench.ledger_load [--calls 50] [--processes 2]

It prints the time and what the log holds; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench.stream_overhead import API_KEY, server_process  # noqa: E402
from core import metering, store  # noqa: E402
from core.config import make_endpoint  # noqa: E402
from core.metering import Call  # noqa: E402
from core.providers import Message  # noqa: E402
from core.runner import Run  # noqa: E402


class _Count(logging.Handler):
    """Counts the ledger's log records that mention a locked database (retries, failures)."""

    def __init__(self) -> None:
        super().__init__()
        self.locked = 0
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        if "locked" in text.lower():
            self.locked += 1
        if record.levelno >= logging.ERROR:
            self.failed += 1


def child(url: str, calls: int) -> dict[str, object]:
    """One app process: `calls` metered calls at once; what its callers saw."""
    metering.HEARTBEAT_S = 0.2
    counter = _Count()
    for name in ("core.metering", "core.writes"):  # the row writes go through the write queue
        logging.getLogger(name).addHandler(counter)
    endpoint = make_endpoint("Fake", "custom", base_url=url, api_key=API_KEY, source="env")
    store.engine()  # tables exist before the clock starts, as in a running app
    settled: dict[int, float] = {}  # id(call) -> when its row was complete (on_end)
    started = time.perf_counter()
    run = Run([Call(endpoint, "gpt-4o-mini", [Message("user", f"Question {i}")],
                    user_id="bench") for i in range(calls)],
              on_end=lambda c: settled.__setitem__(id(c), time.perf_counter())).start()
    run.wait()
    errors = [str(c.error) for c in run.calls if c.error is not None]
    # From the answer's last chunk to its row complete: what the shared log costs a call.
    lags = sorted(settled[id(c)] - (c.reply.started or 0.0) - (c.reply.total or 0.0)
                  for c in run.calls)
    return {"seconds": time.perf_counter() - started,
            "row_lag_ms": (lags[len(lags) // 2] * 1e3, lags[-1] * 1e3),
            "statuses": sorted(c.status for c in run.calls), "errors": errors,
            "locked_retries": counter.locked, "write_failures": counter.failed,
            "rows_written": sum(c.row_id is not None for c in run.calls)}


def main(argv: list[str] | None = None) -> int:
    """Start the server and the processes, then read what the log holds."""
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_load",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls in all (default 50)")
    parser.add_argument("--processes", type=int, default=2, help="app processes (default 2)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    with tempfile.TemporaryDirectory(prefix="owngpt-bench-") as tmp:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{Path(tmp) / 'calls.sqlite3'}"}
        os.environ.update(env)
        store.engine()  # one process creates the tables, as the app's migration step would
        share = [args.calls // args.processes + (i < args.calls % args.processes)
                 for i in range(args.processes)]
        with server_process("tests.fakes.openai_server",
                             ["--port", "0", "--tokens", "200", "--rate", "100", "--quiet",
                              "--api-key", API_KEY]) as url:
            started = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-m", "bench.ledger_load", "--child", url,
                                       str(n)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      text=True) for n in share]
            results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
            wall = time.perf_counter() - started
        with store.engine().connect() as conn:
            by_status = dict(conn.execute(select(store.calls.c.status, func.count())
                                          .group_by(store.calls.c.status)).all())
            complete = conn.execute(select(func.count()).where(
                store.calls.c.ended_at.is_not(None), store.calls.c.output_tokens == 200)
            ).scalar_one()
        store.engine().dispose()
    errors = [e for r in results for e in r["errors"]]
    print(f"ledger load, {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; "
          f"{args.calls} calls at once over {args.processes} process(es) "
          f"({', '.join(map(str, share))}); 200 tokens at 100 tokens/s each; heartbeat 0.2 s")
    for i, r in enumerate(results):
        print(f"process {i}: all calls ended after {r['seconds']:.2f} s; answer end -> row "
              f"complete median {r['row_lag_ms'][0]:.1f} ms, max {r['row_lag_ms'][1]:.1f} ms; "
              f"rows written {r['rows_written']}; locked-database retries "
              f"{r['locked_retries']}; write failures {r['write_failures']}")
    print(f"wall time {wall:.2f} s (with process start-up); rows by status {by_status}; "
          f"complete rows {complete}/{args.calls}; errors reaching a caller: {len(errors)}"
          + (f" ({errors[0]})" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
