"""Saved conversations on SQLite: the data work of a chat rerun as the conversation grows.

For a conversation of 50, 500 and 2,000 turns (a turn: a question of ~300 characters and an
answer of ~1,500, every tenth answer regenerated once, so there are branches to walk):
  load      `load(last=40)`: the conversation, the tree walk, the last 40 messages' text
  rerun     what the chat page reads on a rerun: load + the sidebar list + the running total
  send      what sending reads: the whole active path, then `fit_context` to a 128k window
Then, with 5,000 conversations for one user (4 messages each):
  list      the first 50 for the sidebar, grouped by day; and all 5,000
  search    a substring over every title and message (a full scan, by design)

Run: .venv/bin/python -m bench.conversations [--rounds 15]
Prints the median and the slowest round in milliseconds; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from core import conversations as cv
from core import conversations_list as cl
from core import store
from core.conversations_context import fit_context

USER = "bench@example.com"
QUESTION = "请解释一下这段代码为什么在高并发下会死锁，并给出修改建议。" * 5 + "x" * 150
ANSWER = ("The lock is taken in two orders: thread A holds the pool lock and waits for the row "
          "lock while thread B does the opposite. Take them in one order everywhere. ") * 10


def build(eng: Engine, turns: int, first_id: int) -> str:
    """A conversation of `turns` turns, written in bulk; its id."""
    now = datetime.now(UTC)
    cid = cv.new_id()
    rows, parent, mid = [], None, first_id
    for turn in range(turns):
        question = mid
        rows.append(_row(mid, cid, parent, "user", f"{turn} {QUESTION}", 2 * turn, now))
        mid += 1
        if turn % 10 == 0:  # a regenerated answer: a sibling branch not on the path
            rows.append(_row(mid, cid, question, "assistant", f"old {ANSWER}", 2 * turn + 1, now))
            mid += 1
        rows.append(_row(mid, cid, question, "assistant", f"{turn} {ANSWER}", 2 * turn + 1, now))
        parent = mid
        mid += 1
    with eng.begin() as conn:
        conn.execute(store.conversations.insert().values(
            id=cid, user_id=USER, title=f"{turns} turns", created_at=now, updated_at=now,
            endpoint="bench", model="gpt-x", system_prompt="Be brief.", params={}, seq=0,
            leaf_id=parent))
        conn.execute(store.messages.insert(), rows)
    return cid


def build_many(eng: Engine, count: int, first_id: int) -> None:
    """`count` small conversations, their last writes spread over 90 days."""
    now = datetime.now(UTC)
    convs, msgs, mid = [], [], first_id
    for n in range(count):
        cid = cv.new_id()
        at = now - timedelta(minutes=26 * n)
        convs.append({"id": cid, "user_id": USER, "title": f"对话 {n} about topic {n % 97}",
                      "created_at": at, "updated_at": at, "endpoint": "bench", "model": "gpt-x",
                      "system_prompt": "", "params": {}, "seq": 0, "leaf_id": mid + 3})
        parent = None
        for i in range(4):
            text = f"{n} {QUESTION[:120]}" if i % 2 == 0 else f"{n} {ANSWER[:600]}"
            msgs.append(_row(mid, cid, parent, "user" if i % 2 == 0 else "assistant", text, i,
                             at))
            parent, mid = mid, mid + 1
    with eng.begin() as conn:
        conn.execute(store.conversations.insert(), convs)
        conn.execute(store.messages.insert(), msgs)


def _row(mid: int, cid: str, parent: int | None, role: str, text: str, position: int,
         at: datetime) -> dict:
    return {"id": mid, "conversation_id": cid, "parent_id": parent, "role": role, "text": text,
            "reasoning": "", "status": "ok", "error_kind": None, "call_id": None,
            "model": "gpt-x", "created_at": at, "position": position}


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median and slowest of `rounds` runs, in milliseconds (after one warm-up run)."""
    fn()
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        eng = store.engine(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        print(f"{'what':<44}{'median ms':>11}{'max ms':>9}")
        next_id = 1
        for turns in (50, 500, 2000):
            cid = build(eng, turns, next_id)
            next_id += 3 * turns

            def load(cid: str = cid) -> None:
                cv.load(USER, cid, last=40, eng=eng)

            def rerun(cid: str = cid) -> None:
                cv.load(USER, cid, last=40, eng=eng)
                cl.group_by_day(cl.list_conversations(USER, eng=eng), "Asia/Shanghai")
                cl.spent(USER, cid, eng=eng)

            def send(cid: str = cid) -> None:
                fit = fit_context("Be brief.", cv.path(USER, cid, eng=eng), 128_000, 4_000)
                assert fit.messages

            for name, fn in (("load last 40", load), ("rerun (load + list + total)", rerun),
                             ("send (whole path + fit 128k)", send)):
                median, worst = timed(fn, args.rounds)
                print(f"{turns:>5} turns  {name:<32}{median:>11.2f}{worst:>9.2f}")

        build_many(eng, 5000, next_id)
        total = cl.count_conversations(USER, eng=eng)
        for name, fn in (
            ("list first 50 + group by day", lambda: cl.group_by_day(
                cl.list_conversations(USER, limit=50, eng=eng), "Asia/Shanghai")),
            ("list all", lambda: cl.list_conversations(USER, limit=10_000, eng=eng)),
            ("search '死锁' (first 20)", lambda: cl.search(USER, "死锁", eng=eng)),
            ("search 'topic 42' (title)", lambda: cl.search(USER, "topic 42", eng=eng)),
            ("search absent text", lambda: cl.search(USER, "no such words", eng=eng)),
        ):
            median, worst = timed(fn, args.rounds)
            print(f"{total:>5} convs  {name:<32}{median:>11.2f}{worst:>9.2f}")
        eng.dispose()


if __name__ == "__main__":
    main()
