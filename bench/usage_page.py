"""Server time and peak memory of drawing the usage page over a filled call log.

    .venv/bin/python -m bench.fill_calls /tmp/usage_1m.sqlite3
    .venv/bin/python -m bench.usage_page /tmp/usage_1m.sqlite3

Calls the page's core functions in the order app_pages/usage.py does (everything the
browser is sent is built), once filtered to 30 days and once unfiltered, in a fresh process
each, and prints wall time and the peak resident memory. Goal: < 2 s and < 600 MB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from core import metering, store, usage


def draw(path: str, preset: str) -> None:
    """What one run of the page asks of core, for the user "local"."""
    eng = store.engine(f"sqlite:///{path}")
    tz = usage.zone("Asia/Shanghai")
    began = time.perf_counter()
    metering.mark_interrupted(eng)
    usage.has_calls("local", eng=eng)
    start, end = usage.date_range(preset, tz)
    chosen = usage.Filters(start, end)
    hours = usage.hourly("local", chosen, eng=eng)  # the filter lists are read off these
    usage.with_urls("local", usage.facets_of(hours), eng=eng)  # the prices tab
    totals = usage.totals(hours)
    usage.ledger("local", chosen, tz, eng=eng)
    usage.daily(hours, tz)
    usage.speed("local", chosen, eng=eng)
    usage.dearest("local", chosen, tz, eng=eng)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{preset:>4}: {totals.calls:>9,} calls  {seconds:5.2f} s  peak {peak:5.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--preset", default=None)
    args = parser.parse_args()
    if args.preset:
        draw(args.path, args.preset)
        return
    # The first draw over a log without its rollup builds it (once); then the usual draws.
    for preset in ("all", "30d", "all"):
        subprocess.run([sys.executable, "-m", "bench.usage_page", args.path, "--preset", preset],
                       check=True)


if __name__ == "__main__":
    main()
