"""Fill a SQLite call log with N made-up calls (1,000,000 by default) for the usage benchmark.

    .venv/bin/python -m bench.fill_calls /tmp/calls.sqlite3 --rows 1000000 --days 365

The table is made by the app's own code (`core.store`), then filled through sqlite3's
executemany in one transaction: about a minute for a million rows on two cores, indexes
included. Most rows belong to the user "local"; a few to "other", so a query that forgets its
`user_id` filter shows up in the figures.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core import store

MODELS = (  # model, endpoint, provider, base_url, $ per million input, output
    ("gpt-4o-mini", "OpenAI", "openai", "https://api.openai.com/v1", 0.15, 0.6),
    ("gpt-4o", "OpenAI", "openai", "https://api.openai.com/v1", 2.5, 10.0),
    ("deepseek-chat", "DeepSeek", "openai", "https://api.deepseek.com/v1", 0.27, 1.1),
    ("qwen-max", "Qwen (DashScope)", "openai",
     "https://dashscope.aliyuncs.com/compatible-mode/v1", None, None),  # no catalog price
    ("llama3.2:1b", "Ollama", "ollama", "http://127.0.0.1:11434", 0.0, 0.0),
    ("模型/odd \"name\"", "vLLM", "openai", "http://gpu-box:8000/v1", 0.0, 0.0),
)
WEIGHTS = (40, 10, 20, 10, 15, 5)
SOURCES = ("chat", "chat", "chat", "compare", "compare", "title")
STATUSES = ("ok",) * 90 + ("error",) * 5 + ("stopped",) * 4 + ("interrupted",)
COLUMNS = ("user_id", "started_at", "ended_at", "source", "endpoint", "provider", "base_url",
           "model", "server_model", "status", "error_kind", "finish_reason", "input_tokens",
           "cached_input_tokens", "output_tokens", "reasoning_tokens", "estimated", "cost_usd",
           "ttft_s", "total_s", "output_chars", "conversation_id")


def rows(n: int, days: int, seed: int = 7):
    """Yield n call rows spread evenly over the last `days` days, oldest first."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    span = timedelta(days=days).total_seconds()
    fmt = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DateTime storage format
    picks = rng.choices(range(len(MODELS)), weights=WEIGHTS, k=n)
    for i in range(n):
        model, endpoint, provider, url, p_in, p_out = MODELS[picks[i]]
        started = now - timedelta(seconds=span * (n - i) / n)
        status = rng.choice(STATUSES)
        input_tokens = rng.randint(20, 4000)
        cached = rng.choice((0, 0, input_tokens // 2))
        output = rng.randint(0, 1500) if status != "error" else 0
        ttft = rng.uniform(0.15, 2.5) if status != "error" else None
        total = (ttft or 0) + output / rng.uniform(20, 120)
        cost = None if p_in is None else round(
            ((input_tokens - cached) * p_in + cached * p_in / 2 + output * p_out) / 1e6, 8)
        yield (
            "other" if i % 20 == 0 else "local", started.strftime(fmt),
            (started + timedelta(seconds=total)).strftime(fmt), SOURCES[i % len(SOURCES)],
            endpoint, provider, url, model, model, status,
            "server" if status == "error" else None, "stop" if status == "ok" else None,
            input_tokens, cached, output, 0, status == "interrupted", cost, ttft, total,
            output * 4, f"conv-{i // 8}",
        )


def fill(path: Path, n: int, days: int) -> float:
    """Create the schema at `path` and insert n rows; the seconds it took."""
    store.engine(f"sqlite:///{path}").dispose()  # the app's schema and indexes
    began = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    sql = (f"INSERT INTO calls ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    with conn:
        conn.executemany(sql, rows(n, days))
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    if args.path.exists():
        parser.error(f"{args.path} exists; the generator fills a new file")
    seconds = fill(args.path, args.rows, args.days)
    print(f"{args.rows:,} rows in {seconds:.1f} s -> {args.path}")


if __name__ == "__main__":
    main()
