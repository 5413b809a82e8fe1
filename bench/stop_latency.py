"""How fast Stop really stops: from `Run.stop()` to the worker's end and to the server seeing
the connection close, while the first token is still coming and mid-answer, both adapters.

The fake servers run in this process so that they can report when each client hung up
(`FakeServer.hangups`, noticed within 2 ms while they wait or stream). The "first token" case
asks for a first token 5 s away (the `fault-slow` model); "mid-stream" stops an answer that
streams at 200 tokens/s once 20 tokens have arrived. Goal (issue 5): both <= 0.3 s.

    .venv/bin/python -m bench.stop_latency [--runs 10]

It is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import store  # noqa: E402
from core.config import Endpoint, make_endpoint  # noqa: E402
from core.metering import Call  # noqa: E402
from core.providers import Message  # noqa: E402
from core.runner import Run  # noqa: E402
from tests.fakes import FakeOllamaServer, FakeOpenAIServer  # noqa: E402
from tests.fakes.common import FakeServer  # noqa: E402

API_KEY = "sk-bench-0123456789abcdef"
GOAL_S = 0.3
FIRST_TOKEN_S = 5.0


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until `check()` is true; raise when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.001)


def one_stop(server: FakeServer, endpoint: Endpoint, model: str, mid_stream: bool
             ) -> tuple[float, float]:
    """Start one call, stop it at the chosen moment; (to worker end, to server close) in s."""
    requests, hangups = len(server.requests), len(server.hangups)
    call = Call(endpoint, model, [Message("user", "Hello")], user_id="bench")
    run = Run([call], on_end=lambda c: None).start()
    wait_for(lambda: len(server.requests) > requests, 5, "the request")
    if mid_stream:
        wait_for(lambda: len(call.text.split()) >= 20, 5, "20 tokens")
    else:
        time.sleep(0.2)  # the request is in, the server is waiting for its "first token"
    stopped = time.monotonic()
    run.stop()
    if not run.wait(10):
        raise RuntimeError("the run did not end within 10 s of Stop")
    ended = time.monotonic()
    if not server.wait_for_hangups(hangups + 1, timeout=10):
        raise RuntimeError("the server never saw the connection close")
    if call.status != "stopped":
        raise RuntimeError(f"the call ended {call.status}, not stopped")
    return ended - stopped, server.hangups[-1][0] - stopped


def main(argv: list[str] | None = None) -> int:
    """Measure each case `--runs` times and print medians and maxima."""
    parser = argparse.ArgumentParser(prog="python -m bench.stop_latency",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="stops per case (default 10)")
    args = parser.parse_args(argv)
    settings = {"slow_first_token": FIRST_TOKEN_S, "rate": 200, "tokens": 5000}
    with tempfile.TemporaryDirectory(prefix="owngpt-bench-") as tmp:
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'calls.sqlite3'}"
        with (FakeOpenAIServer(api_key=API_KEY, **settings) as oa,
              FakeOllamaServer(**settings) as ol):
            cases = [
                ("openai", oa, make_endpoint("o", "custom", base_url=oa.url, api_key=API_KEY,
                                             source="env"), "gpt-4o-mini"),
                ("ollama", ol, make_endpoint("l", "ollama", base_url=ol.url, source="env"),
                 "llama3.2:1b"),
            ]
            print(f"stop latency, {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; "
                  f"{args.runs} stops per case; seconds from Run.stop()")
            print(f"{'adapter':<7} {'moment':<18} {'worker end med':>14} {'max':>7} "
                  f"{'server close med':>16} {'max':>7}  goal <= {GOAL_S} s")
            for name, server, endpoint, model in cases:
                for moment, mid in (("first-token wait", False), ("mid-stream", True)):
                    chosen = model if mid else "fault-slow"
                    one_stop(server, endpoint, chosen, mid)  # warm-up: connection, imports
                    got = [one_stop(server, endpoint, chosen, mid) for _ in range(args.runs)]
                    ends, closes = [g[0] for g in got], [g[1] for g in got]
                    worst = max(max(ends), max(closes))
                    print(f"{name:<7} {moment:<18} {statistics.median(ends):>14.4f} "
                          f"{max(ends):>7.4f} {statistics.median(closes):>16.4f} "
                          f"{max(closes):>7.4f}  {'PASS' if worst <= GOAL_S else 'MISS'}")
        store.engine().dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
