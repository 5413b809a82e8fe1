"""Server time of a chat-page rerun (a sidebar click) with a long conversation open.

The page runs under Streamlit's AppTest in this process against a SQLite file: the time is
the script run's (reading the conversation, drawing the last 50 messages with their buttons,
the sidebar list and the running total), plus AppTest's own overhead of handing the result
back, so it is an upper bound of what a browser session costs the server. Conversations of
50, 500 and 2,000 turns (built as in bench/conversations.py, with branches), then the same
50-turn conversation with 5,000 other conversations in the list.

Run: .venv/bin/python -m bench.chat_rerun [--rounds 7]
Prints the median and the slowest rerun in milliseconds; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

USER = "local"  # the page's user when no sign-in is configured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OLLAMA_HOST"):
            os.environ.pop(name, None)
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        os.environ["OWNGPT_AUTODETECT_OLLAMA"] = "0"
        os.environ["OWNGPT_ENV_FILE"] = str(Path(tmp) / "absent.env")
        from streamlit.testing.v1 import AppTest

        from bench import conversations as bc
        from core import store
        from tests.fakes import FakeOpenAIServer

        bc.USER = USER
        eng = store.engine(os.environ["DATABASE_URL"])
        entry = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
        key = "sk-bench-0123456789"
        with FakeOpenAIServer(api_key=key) as server:
            os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = server.url, key

            def rerun_ms(cid: str) -> tuple[float, float]:
                at = AppTest.from_file(entry, default_timeout=60)
                at.query_params["c"] = cid
                at.run()
                assert not at.exception, at.exception
                runs = []
                for _ in range(args.rounds):
                    button = at.button(key=f"convo_open_{cid}")
                    start = time.perf_counter()
                    button.click().run()
                    runs.append((time.perf_counter() - start) * 1000)
                return statistics.median(runs), max(runs)

            print(f"{'what':<44}{'median ms':>11}{'max ms':>9}")
            next_id = 1
            first = None
            for turns in (50, 500, 2000):
                cid = bc.build(eng, turns, next_id)
                first = first or cid
                next_id += 3 * turns
                median, worst = rerun_ms(cid)
                print(f"{f'{turns:,} turns open':<44}{median:>11.1f}{worst:>9.1f}")
            bc.build_many(eng, 5000, next_id)
            assert first is not None
            median, worst = rerun_ms(first)
            print(f"{'50 turns open, 5,000 conversations listed':<44}{median:>11.1f}"
                  f"{worst:>9.1f}")


if __name__ == "__main__":
    main()
