"""What metering costs a streamed answer: the OwnGPT path against the raw async clients.

For each adapter, the fake server streams an answer as fast as it can, and two paths are
timed from the caller's thread, each on the process's one call loop (`core.aio`):

* raw: `openai.AsyncOpenAI` / `ollama.AsyncClient` alone, one client reused across runs, every
  chunk consumed, driven by `aio.run(...)`;
* reply: the adapter's `Reply` alone (`provider_for(endpoint).stream(...)` iterated on the
  loop): what the adapter layer costs, to tell it apart from metering's own share;
* metered: `Run([Call(...)], on_end=...)` started and waited for, as the chat page drives it:
  adapter, `Reply` bookkeeping, the row INSERTed when the request goes out and completed at
  the end (a temporary SQLite file named by DATABASE_URL, as the app reads it), pricing, the
  hop to the on_end worker. `wait()` returns only once the row is complete.

Each path runs at two lengths, 1 token (`max_tokens=1`) and `--tokens` (default 2,000), so
that the extra time of the metered path splits into a fixed cost per call and a cost per
chunk: fixed = extra(short); per chunk = (extra(long) - extra(short)) / (long - short).
Extras are metered minus raw within one round (neighbours in time), then the median over
rounds. Goals (issue 5): fixed <= 2 ms with the row writes, <= 2 us per chunk. The total-time
ratio on the long answer is printed alongside. CPU time of this process is measured too:
with the servers in their own process it is the client's work alone, less disturbed by
other load than wall time.

    .venv/bin/python -m bench.stream_overhead [--rounds 20] [--tokens 2000]

It is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
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

from core import aio, store  # noqa: E402
from core.config import Endpoint, make_endpoint  # noqa: E402
from core.metering import Call  # noqa: E402
from core.providers import Message, Params, provider_for  # noqa: E402
from core.runner import Run  # noqa: E402

API_KEY = "sk-bench-0123456789abcdef"
OPENAI_MODEL = "gpt-4o-mini"  # a chat model the fake OpenAI server knows
OLLAMA_MODEL = "llama3.2:1b"  # a model the fake Ollama server has "pulled"
PROMPT = "Hello"
PATHS = ("raw", "reply", "metered")
FIXED_GOAL_MS = 2.0
CHUNK_GOAL_US = 2.0


@dataclass(frozen=True)
class Sample:
    """One streamed answer as the caller saw it."""

    ttft: float  # seconds from the request to the first non-empty content
    total: float  # seconds until the caller has the whole answer (metered: row completed)
    cpu: float  # CPU seconds of this process meanwhile
    chars: int  # answer characters, to check both paths did the same work


@dataclass
class Adapter:
    """One adapter's two paths, and what they measured per length."""

    name: str
    raw: Callable[[int], Sample]
    reply: Callable[[int], Sample]
    metered: Callable[[int], Sample]
    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)


# -- the fake servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def servers(tokens: int) -> Iterator[tuple[str, str]]:
    """Both fake servers, each in a process of its own; yields the (openai, ollama) URLs.

    The fakes are pure Python: in this process they would take the GIL in turns with the
    client, and the figures would measure that contention as much as metering.
    """
    common = ["--port", "0", "--tokens", str(tokens), "--rate", "0", "--quiet"]
    with (
        server_process("tests.fakes.openai_server", [*common, "--api-key", API_KEY]) as oa_url,
        server_process("tests.fakes.ollama_server", common) as ol_url,
    ):
        yield oa_url, ol_url


@contextlib.contextmanager
def server_process(module: str, args: list[str]) -> Iterator[str]:
    """One fake server as `python -m module`; yields the URL its banner prints."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
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
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the paths being timed ----------------------------------------------------------------------


def timed(coro_factory: Callable[[float], object]) -> Sample:
    """Run one raw coroutine on the call loop, timed from this thread."""
    started, cpu = time.perf_counter(), time.process_time()
    ttft, chars = aio.run(coro_factory(started))  # type: ignore[arg-type]
    return Sample(ttft, time.perf_counter() - started, time.process_time() - cpu, chars)


async def raw_openai(client: openai.AsyncOpenAI, tokens: int, started: float
                     ) -> tuple[float, int]:
    """Stream through the async `openai` SDK alone, as the adapter asks (usage included)."""
    ttft, chars = 0.0, 0
    stream = await client.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}, max_tokens=tokens)
    async for chunk in stream:
        for choice in chunk.choices:
            content = choice.delta.content
            if content:
                if not chars:
                    ttft = time.perf_counter() - started
                chars += len(content)
    return ttft, chars


async def raw_ollama(client: ollama.AsyncClient, tokens: int, started: float
                     ) -> tuple[float, int]:
    """Stream through the async `ollama` package alone."""
    ttft, chars = 0.0, 0
    stream = await client.chat(model=OLLAMA_MODEL, messages=[{"role": "user", "content": PROMPT}],
                               stream=True, options={"num_predict": tokens})
    async for part in stream:
        content = part.message.content
        if content:
            if not chars:
                ttft = time.perf_counter() - started
            chars += len(content)
    return ttft, chars


async def reply_only(endpoint: Endpoint, model: str, tokens: int, started: float
                     ) -> tuple[float, int]:
    """The adapter layer alone: its Reply iterated, no Call, no row."""
    reply = provider_for(endpoint).stream(model, [Message("user", PROMPT)],
                                          Params(max_tokens=tokens))
    async for _ in reply:
        pass
    return (reply.started or started) + (reply.ttft or 0.0) - started, len(reply.text)


def metered(endpoint: Endpoint, model: str, tokens: int) -> Sample:
    """The chat page's path: one Call in a Run, an on_end, waited for from this thread."""
    started, cpu = time.perf_counter(), time.process_time()
    call = Call(endpoint, model, [Message("user", PROMPT)], Params(max_tokens=tokens),
                user_id="bench", source="chat")
    Run([call], on_end=lambda c: None).start().wait()
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    if call.status != "ok" or call.row_id is None:
        raise RuntimeError(f"metered call did not log an ok row: {call.status} {call.error}")
    reply = call.reply
    ttft = (reply.started or started) + (reply.ttft or 0.0) - started
    return Sample(ttft, total, cpu, len(call.text))


def adapters(openai_url: str, ollama_url: str) -> list[Adapter]:
    """Both adapters' raw and metered paths, each on one client reused across runs."""
    oa_client = openai.AsyncOpenAI(base_url=openai_url, api_key=API_KEY, max_retries=0)
    ol_client = ollama.AsyncClient(host=ollama_url)
    oa_ep = make_endpoint("bench-openai", "custom", base_url=openai_url, api_key=API_KEY,
                          source="env")
    ol_ep = make_endpoint("bench-ollama", "ollama", base_url=ollama_url, source="env")
    return [
        Adapter("openai", lambda n: timed(lambda t0: raw_openai(oa_client, n, t0)),
                lambda n: timed(lambda t0: reply_only(oa_ep, OPENAI_MODEL, n, t0)),
                lambda n: metered(oa_ep, OPENAI_MODEL, n)),
        Adapter("ollama", lambda n: timed(lambda t0: raw_ollama(ol_client, n, t0)),
                lambda n: timed(lambda t0: reply_only(ol_ep, OLLAMA_MODEL, n, t0)),
                lambda n: metered(ol_ep, OLLAMA_MODEL, n)),
    ]


# -- measuring and reporting --------------------------------------------------------------------


def measure(found: list[Adapter], lengths: tuple[int, int], rounds: int) -> None:
    """Warm every path up, then run `rounds` interleaved rounds of all four runs each."""
    for a in found:
        for n in lengths:
            for path in PATHS:
                getattr(a, path)(n)
    for i in range(rounds):
        # Alternate the order, so a trend over the run lands on every path alike.
        order = PATHS if i % 2 == 0 else PATHS[::-1]
        for a in found:
            for n in lengths:
                for path in order:
                    a.samples.setdefault((path, n), []).append(getattr(a, path)(n))
    for a in found:
        for n in lengths:
            chars = {s.chars for path in PATHS for s in a.samples[(path, n)]}
            if len(chars) != 1:
                raise RuntimeError(f"{a.name}: the paths received different answers: {chars}")


@dataclass(frozen=True)
class Extra:
    """What one path costs beyond the raw client."""

    fixed_ms: float  # per call, wall
    fixed_cpu_ms: float
    chunk_us: float  # per chunk, wall
    chunk_cpu_us: float
    ratio: float  # median per-round path/raw total time on the long answer
    cpu_ratio: float


@dataclass(frozen=True)
class Summary:
    """One adapter's figures."""

    name: str
    medians: dict[tuple[str, int], tuple[float, float, float]]  # ttft, total, cpu (s)
    extras: dict[str, Extra]  # "reply" (adapter layer) and "metered" (the whole path)


def summarize(a: Adapter, lengths: tuple[int, int]) -> Summary:
    """Medians, and each path's fixed and per-chunk extra over raw, per round."""
    short, long = lengths

    def extra(path: str, attr: str, n: int) -> list[float]:
        pairs = zip(a.samples[("raw", n)], a.samples[(path, n)], strict=True)
        return [getattr(m, attr) - getattr(r, attr) for r, m in pairs]

    def per_chunk(path: str, attr: str) -> float:
        pairs = zip(extra(path, attr, short), extra(path, attr, long), strict=True)
        return statistics.median((lo - sh) / (long - short) for sh, lo in pairs)

    def ratio(path: str, attr: str) -> float:
        pairs = zip(a.samples[("raw", long)], a.samples[(path, long)], strict=True)
        return statistics.median(getattr(m, attr) / max(getattr(r, attr), 1e-9) for r, m in pairs)

    medians = {key: (statistics.median(s.ttft for s in samples),
                     statistics.median(s.total for s in samples),
                     statistics.median(s.cpu for s in samples))
               for key, samples in a.samples.items()}
    extras = {path: Extra(
        fixed_ms=statistics.median(extra(path, "total", short)) * 1e3,
        fixed_cpu_ms=statistics.median(extra(path, "cpu", short)) * 1e3,
        chunk_us=per_chunk(path, "total") * 1e6, chunk_cpu_us=per_chunk(path, "cpu") * 1e6,
        ratio=ratio(path, "total"), cpu_ratio=ratio(path, "cpu")) for path in PATHS[1:]}
    return Summary(a.name, medians, extras)


def report(summaries: list[Summary], lengths: tuple[int, int]) -> str:
    """The table of medians, then the fixed and per-chunk costs against their goals."""
    lines = [f"{'adapter':<7} {'path':<8} {'tokens':>6} {'TTFT ms':>8} {'total ms':>9} "
             f"{'CPU ms':>8}"]
    for s in summaries:
        for n in lengths:
            for path in PATHS:
                ttft, total, cpu = s.medians[(path, n)]
                lines.append(f"{s.name:<7} {path:<8} {n:>6} {ttft * 1e3:>8.2f} "
                             f"{total * 1e3:>9.2f} {cpu * 1e3:>8.2f}")
    lines += ["", f"{'beyond raw':<18} {'fixed ms':>8} {'(CPU)':>7} {'chunk us':>9} "
              f"{'(CPU)':>7} {'ratio':>7} {'(CPU)':>7}"]
    for s in summaries:
        for path, e in s.extras.items():
            label = f"{s.name} {'metered' if path == 'metered' else 'adapter only'}"
            lines.append(f"{label:<18} {e.fixed_ms:>8.2f} {e.fixed_cpu_ms:>7.2f} "
                         f"{e.chunk_us:>9.2f} {e.chunk_cpu_us:>7.2f} {e.ratio:>6.3f}x "
                         f"{e.cpu_ratio:>6.3f}x")
    lines.append("")
    for s in summaries:
        e = s.extras["metered"]
        lines += [
            f"{s.name}: fixed cost per call {e.fixed_ms:.2f} ms (goal <= {FIXED_GOAL_MS:g} ms, "
            f"row writes included): {'PASS' if e.fixed_ms <= FIXED_GOAL_MS else 'MISS'}; "
            f"per chunk {e.chunk_us:.2f} us (goal <= {CHUNK_GOAL_US:g} us): "
            f"{'PASS' if e.chunk_us <= CHUNK_GOAL_US else 'MISS'}; "
            f"total ratio on {lengths[1]:,} tokens {e.ratio:.3f}x",
        ]
    return "\n".join(lines)


def machine() -> str:
    """What the figures were measured on."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("openai", "ollama", "httpx", "SQLAlchemy"))
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "n/a"
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
            f"({platform.system()} {platform.machine()}); {versions}; load average {load}")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.stream_overhead",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens of the long answer")
    args = parser.parse_args(argv)
    lengths = (1, args.tokens)
    previous_url = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="owngpt-bench-") as tmp:
        # The app writes through store.engine(), which reads DATABASE_URL: a file of our own,
        # so every metered call really writes its row and no real log is touched.
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'calls.sqlite3'}"
        try:
            print(f"stream overhead, {time.strftime('%Y-%m-%d %H:%M')}; {machine()}")
            with servers(args.tokens) as (openai_url, ollama_url):
                found = adapters(openai_url, ollama_url)
                measure(found, lengths, args.rounds)
            print(f"fake servers in their own processes, full speed; {args.rounds} interleaved "
                  f"rounds; medians")
            print(report([summarize(a, lengths) for a in found], lengths))
        finally:
            store.engine().dispose()  # close the file before its directory goes
            if previous_url is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = previous_url
    return 0


if __name__ == "__main__":
    sys.exit(main())
