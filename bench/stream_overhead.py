"""What metering costs a streamed answer: the OwnGPT path against the raw `openai` and `ollama`.

For each adapter, the fake server streams `--tokens` tokens (default 2,000) as fast as it can
(or at `--rate` tokens/s) and the benchmark times, from the request to the first non-empty
content (TTFT) and to the end of the stream (total), on two paths:

* raw: the SDK alone, one client reused across runs, every chunk consumed;
* metered: `core.metering.Call` on an endpoint from `core.config.make_endpoint`, as the chat
  page drives it: adapter, `Reply` bookkeeping, pricing lookup and the one call-log row written
  to a SQLite database (a temporary file named by DATABASE_URL, as the app reads it). Its
  stream ends only once the row is written, so that write is inside its total.

It also records the CPU time of this process per run: with the servers in their own process
that is the client's work alone, which other load on the machine disturbs less than wall time.

Runs are interleaved (raw and metered alternate which goes first each round) so drift of the
machine (CPU frequency, other load) lands on both paths alike. The table prints medians and
three metered/raw ratios: the median of per-round ratios (the one judged against the target),
the ratio of medians, and the ratio of the fastest runs.

Run it from the repository root (see bench/README.md):

    .venv/bin/python -m bench.stream_overhead [--rounds 15] [--servers process|thread|both]
    .venv/bin/python bench/stream_overhead.py --check     # exit 1 when a ratio misses
    .venv/bin/python -m bench.stream_overhead --profile 5  # then cProfile 5 calls per path

It is a benchmark, not a test: it exits 0 whatever it measures unless `--check` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# `python bench/stream_overhead.py` puts bench/ first on sys.path, not the root that holds
# `core` and `tests.fakes`; `python -m bench.stream_overhead` from the root needs nothing.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ollama  # noqa: E402
import openai  # noqa: E402

from core import store  # noqa: E402
from core.config import Endpoint, make_endpoint  # noqa: E402
from core.metering import Call  # noqa: E402
from core.providers import Message  # noqa: E402

API_KEY = "sk-bench-0123456789abcdef"
OPENAI_MODEL = "gpt-4o-mini"  # a chat model the fake OpenAI server knows
OLLAMA_MODEL = "llama3.2:1b"  # a model the fake Ollama server has "pulled"
PROMPT = "Hello"
TARGET = 1.05  # the bound on the metered/raw total-time ratio
SETUPS = ("process", "thread")


@dataclass(frozen=True)
class Sample:
    """One streamed answer as the consumer saw it."""

    ttft: float  # seconds from the request to the first non-empty content
    total: float  # seconds from the request until the stream is exhausted
    cpu: float  # CPU seconds this process spent meanwhile (client work, in the process setup)
    chars: int  # answer characters received, to check both paths did the same work
    tail: float = 0.0  # metered only: seconds after the adapter's stream ended (price + row)


@dataclass
class Paths:
    """The two ways to stream from one adapter, and what they measured."""

    adapter: str
    raw: Callable[[], Sample]
    metered: Callable[[], Sample]
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {"raw": [], "metered": []})


@dataclass(frozen=True)
class Summary:
    """Medians and ratios of one adapter's runs."""

    adapter: str
    raw_ttft: float
    raw_total: float
    raw_cpu: float
    met_ttft: float
    met_total: float
    met_cpu: float
    met_tail: float
    ttft_ratio: float  # median of per-round metered/raw ratios
    total_ratio: float  # median of per-round metered/raw ratios
    cpu_ratio: float  # median of per-round metered/raw ratios
    ttft_ratio_of_medians: float
    total_ratio_of_medians: float
    cpu_ratio_of_medians: float
    ttft_ratio_of_bests: float  # fastest metered run over fastest raw run
    total_ratio_of_bests: float
    cpu_ratio_of_bests: float

    @property
    def passed(self) -> bool:
        """Whether the total-time ratio meets the target (per-round median: robust to drift)."""
        return self.total_ratio <= TARGET


# -- the fake servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def servers(setup: str, tokens: int, rate: float = 0.0) -> Iterator[tuple[str, str]]:
    """Both fake servers, streaming `tokens` tokens at `rate` a second (0: as fast as they can);
    yields the (openai, ollama) URLs.

    "process" (the default) runs each server in a process of its own. The fakes are pure
    Python: in the benchmark's process their threads would take the GIL in turns with the
    client, so every microsecond of client-side work would also stall the server, and the
    ratio would measure GIL contention as much as metering. A real server never shares our
    interpreter, so the separate process is the honest setup. "thread" is kept to show the
    difference (and for machines where spawning a process is awkward).
    """
    if setup == "thread":
        from tests.fakes import FakeOllamaServer, FakeOpenAIServer

        with (
            FakeOpenAIServer(api_key=API_KEY, tokens=tokens, rate=rate) as openai_fake,
            FakeOllamaServer(tokens=tokens, rate=rate) as ollama_fake,
        ):
            yield openai_fake.url, ollama_fake.url
        return
    common = ["--port", "0", "--tokens", str(tokens), "--rate", str(rate), "--quiet"]
    with (
        _server_process("tests.fakes.openai_server", [*common, "--api-key", API_KEY]) as oa_url,
        _server_process("tests.fakes.ollama_server", common) as ol_url,
    ):
        yield oa_url, ol_url


@contextlib.contextmanager
def _server_process(module: str, args: list[str]) -> Iterator[str]:
    """One fake server as `python -m module`; yields the URL its banner prints.

    Port 0 lets the OS pick a free port, so there is no race between choosing one and binding.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,  # `-m` finds `tests.fakes` from the working directory
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:  # the first banner line names the URL for the client
            found = re.search(r" on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            raise RuntimeError(f"{module} exited ({proc.wait()}) before printing its URL")
        yield url
    finally:
        proc.terminate()  # SIGTERM: the fakes stop cleanly on it
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the paths being timed ----------------------------------------------------------------------


def raw_openai(client: openai.OpenAI) -> Sample:
    """Stream through the `openai` SDK alone, as the adapter asks for it (usage included)."""
    started, cpu = time.perf_counter(), time.process_time()
    ttft, chars = None, 0
    stream = client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        for choice in chunk.choices:
            content = choice.delta.content
            if content:
                if ttft is None:
                    ttft = time.perf_counter() - started
                chars += len(content)
    return Sample(ttft or 0.0, time.perf_counter() - started, time.process_time() - cpu, chars)


def raw_ollama(client: ollama.Client) -> Sample:
    """Stream through the `ollama` package alone."""
    started, cpu = time.perf_counter(), time.process_time()
    ttft, chars = None, 0
    for part in client.chat(
        model=OLLAMA_MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    ):
        content = part.message.content
        if content:
            if ttft is None:
                ttft = time.perf_counter() - started
            chars += len(content)
    return Sample(ttft or 0.0, time.perf_counter() - started, time.process_time() - cpu, chars)


def metered(endpoint: Endpoint, model: str) -> Sample:
    """Stream through `Call`, as the chat page does: the row is written before the loop ends."""
    started, cpu = time.perf_counter(), time.process_time()
    ttft, chars = None, 0
    call = Call(endpoint, model, [Message("user", PROMPT)], user="bench", source="bench")
    for text in call:
        if text:
            if ttft is None:
                ttft = time.perf_counter() - started
            chars += len(text)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    if call.status != "ok" or call.row_id is None:
        raise RuntimeError(f"metered call did not log an ok row: {call.status} {call.error}")
    # What follows the adapter's last chunk: pricing lookup and the call-log INSERT.
    tail = total - (call.reply.started - started) - (call.reply.total or 0.0)
    return Sample(ttft or 0.0, total, cpu, chars, tail)


def make_paths(openai_url: str, ollama_url: str) -> list[Paths]:
    """Both adapters' raw and metered paths, each on one client reused across runs.

    The app reuses its clients too (`provider_for` caches one per endpoint), so neither side
    pays for building a client or a connection pool inside the timed region.
    """
    openai_client = openai.OpenAI(base_url=openai_url, api_key=API_KEY, max_retries=0)
    ollama_client = ollama.Client(host=ollama_url)
    openai_endpoint = make_endpoint("bench-openai", "custom", base_url=openai_url,
                                    api_key=API_KEY, source="env")
    ollama_endpoint = make_endpoint("bench-ollama", "ollama", base_url=ollama_url, source="env")
    return [
        Paths("openai", lambda: raw_openai(openai_client),
              lambda: metered(openai_endpoint, OPENAI_MODEL)),
        Paths("ollama", lambda: raw_ollama(ollama_client),
              lambda: metered(ollama_endpoint, OLLAMA_MODEL)),
    ]


# -- measuring and reporting --------------------------------------------------------------------


def measure(paths: list[Paths], rounds: int) -> None:
    """Warm every path up once, then run `rounds` interleaved rounds into `paths[i].samples`."""
    for p in paths:
        # The first call opens the connection, imports lazily and creates the SQLite tables.
        p.raw()
        p.metered()
    for i in range(rounds):
        # Alternate who goes first, so a trend over the run (or the first run's leftovers,
        # such as garbage to collect) does not always fall on the same path.
        order = ("raw", "metered") if i % 2 == 0 else ("metered", "raw")
        for p in paths:
            for name in order:
                p.samples[name].append(getattr(p, name)())
    for p in paths:
        raw_chars = {s.chars for s in p.samples["raw"]}
        met_chars = {s.chars for s in p.samples["metered"]}
        if len(raw_chars | met_chars) != 1:
            raise RuntimeError(f"{p.adapter}: paths received different answers "
                               f"({sorted(raw_chars)} vs {sorted(met_chars)} characters)")


def summarize(p: Paths) -> Summary:
    """Medians and metered/raw ratios of one adapter's samples."""
    raw, met = p.samples["raw"], p.samples["metered"]

    def median(samples: list[Sample], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in samples)

    def per_round(attr: str) -> float:
        # Runs of one round are neighbours in time, so their ratio cancels slow drift.
        pairs = zip(raw, met, strict=True)
        return statistics.median(getattr(m, attr) / max(getattr(r, attr), 1e-9) for r, m in pairs)

    def of_medians(attr: str) -> float:
        return median(met, attr) / max(median(raw, attr), 1e-9)

    def of_bests(attr: str) -> float:
        # Other work on the machine only ever adds time, so the fastest run of each path is
        # the nearest to its intrinsic cost: a cross-check when the medians are noisy.
        return min(getattr(s, attr) for s in met) / max(min(getattr(s, attr) for s in raw), 1e-9)

    return Summary(
        adapter=p.adapter,
        raw_ttft=median(raw, "ttft"),
        raw_total=median(raw, "total"),
        raw_cpu=median(raw, "cpu"),
        met_ttft=median(met, "ttft"),
        met_total=median(met, "total"),
        met_cpu=median(met, "cpu"),
        met_tail=median(met, "tail"),
        ttft_ratio=per_round("ttft"),
        total_ratio=per_round("total"),
        cpu_ratio=per_round("cpu"),
        ttft_ratio_of_medians=of_medians("ttft"),
        total_ratio_of_medians=of_medians("total"),
        cpu_ratio_of_medians=of_medians("cpu"),
        ttft_ratio_of_bests=of_bests("ttft"),
        total_ratio_of_bests=of_bests("total"),
        cpu_ratio_of_bests=of_bests("cpu"),
    )


def table(summaries: list[Summary]) -> str:
    """The compact table: medians in milliseconds, then three kinds of metered/raw ratio.

    "after" is the part of the metered total that follows the adapter's last chunk: the
    pricing lookup and the call-log INSERT (the row's own total_s stops before it).
    """
    ms = 1e3
    lines = [f"{'adapter':<7} {'path':<16} {'TTFT ms':>8} {'total ms':>9} {'CPU ms':>8} "
             f"{'after ms':>8}"]
    for s in summaries:
        lines += [
            f"{s.adapter:<7} {'raw':<16} {s.raw_ttft * ms:>8.2f} {s.raw_total * ms:>9.1f}"
            f" {s.raw_cpu * ms:>8.1f}",
            f"{s.adapter:<7} {'metered':<16} {s.met_ttft * ms:>8.2f} {s.met_total * ms:>9.1f}"
            f" {s.met_cpu * ms:>8.1f} {s.met_tail * ms:>8.2f}",
            f"{s.adapter:<7} {'ratio per-round':<16} {s.ttft_ratio:>7.3f}x {s.total_ratio:>8.3f}x"
            f" {s.cpu_ratio:>7.3f}x",
            f"{s.adapter:<7} {'ratio of medians':<16} {s.ttft_ratio_of_medians:>7.3f}x"
            f" {s.total_ratio_of_medians:>8.3f}x {s.cpu_ratio_of_medians:>7.3f}x",
            f"{s.adapter:<7} {'ratio of bests':<16} {s.ttft_ratio_of_bests:>7.3f}x"
            f" {s.total_ratio_of_bests:>8.3f}x {s.cpu_ratio_of_bests:>7.3f}x",
        ]
    return "\n".join(lines)


def verdicts(summaries: list[Summary]) -> str:
    """One line per adapter: the total-time ratio against the target."""
    return "\n".join(
        f"{s.adapter} total ratio {s.total_ratio:.3f}x (target <= {TARGET}): "
        f"{'PASS' if s.passed else 'FAIL'}"
        for s in summaries
    )


def machine() -> str:
    """What the figures were measured on."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("openai", "ollama", "httpx", "SQLAlchemy"))
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
            f"({platform.system()} {platform.machine()}); {versions}")


def profile(paths: list[Paths], runs: int, top: int) -> None:
    """cProfile `runs` metered and raw calls per adapter and print where the time goes."""
    for p in paths:
        for name in ("raw", "metered"):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(runs):
                getattr(p, name)()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(top)
            print(f"\n== cProfile: {p.adapter} {name}, {runs} calls, top {top} by own time ==")
            print(_trim_profile(out.getvalue()))


def _load() -> str:
    """The 1-minute load average: other work on the machine is the main source of noise."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # not every platform has one
        return "n/a"


def _trim_profile(text: str) -> str:
    """The pstats report without its preamble, paths shortened to what tells them apart."""
    body = text[text.find("ncalls"):] if "ncalls" in text else text
    return re.sub(r"\S*/(site-packages|lib/python3\.\d+|main)/", "", body).rstrip()


def run_setup(setup: str, tokens: int, rate: float, rounds: int, profile_runs: int
              ) -> list[Summary]:
    """Start the servers one way, measure, print the table; returns the summaries."""
    with servers(setup, tokens, rate) as (openai_url, ollama_url):
        paths = make_paths(openai_url, ollama_url)
        measure(paths, rounds)
        summaries = [summarize(p) for p in paths]
        where = ("in a separate process each" if setup == "process"
                 else "in this process (threads)")
        speed = f"{rate:g} tokens/s" if rate > 0 else "full speed"
        print(f"\nfake servers {where}; {tokens} tokens at {speed}; {rounds} interleaved "
              f"rounds; medians; load average now {_load()}")
        print(table(summaries))
        print(verdicts(summaries))
        if profile_runs:
            profile(paths, profile_runs, top=25)
    return summaries


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark, print; 1 only when --check and a ratio misses."""
    parser = argparse.ArgumentParser(prog="python -m bench.stream_overhead",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="tokens/s the fakes stream at (default 0: as fast as they can)")
    parser.add_argument("--servers", choices=[*SETUPS, "both"], default="process",
                        help="fake servers in their own process (default) or in threads here")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a total-time ratio exceeds the target")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="afterwards, cProfile N calls of each path and print the hot spots")
    args = parser.parse_args(argv)

    previous_url = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="owngpt-bench-") as tmp:
        # The app writes through store.engine(), which reads DATABASE_URL: point it at a file
        # of our own so every metered call really writes its row, and no real log is touched.
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'calls.sqlite3'}"
        try:
            print(f"stream overhead, {time.strftime('%Y-%m-%d %H:%M')}; {machine()}; "
                  f"load average {_load()}")
            summaries: list[Summary] = []
            for setup in SETUPS if args.servers == "both" else (args.servers,):
                summaries += run_setup(setup, args.tokens, args.rate, args.rounds, args.profile)
        finally:
            store.engine().dispose()  # close the file before its directory goes
            if previous_url is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = previous_url
    if args.check and not all(s.passed for s in summaries):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
