"""Compare panes in a real browser: do N panes finish as soon as the slowest one alone?

A real `streamlit run` of the app and a headless Chromium (Playwright, the system browser as
the e2e tests use it); every pane has a fake OpenAI server of its own, each in its own process,
so the pacing of one never waits on another's:

    fast  200 tokens at 100/s      2 s
    mid1  400 tokens at 100/s      4 s
    mid2  600 tokens at 100/s      6 s
    slow  1,000 tokens at 100/s   10 s
    late  first token after 5 s, then 200 tokens at 100/s: 7 s

Scenarios, each timed from the Enter that sends the prompt (a key listener in the page) until
every pane's whole answer is on screen (a MutationObserver in the page compares each pane's
text, streaming cursor stripped, with the fake's full answer):

    two    panes fast + slow; also when the slow pane's first tokens appeared
    four   panes fast + slow + mid1 + mid2
    late   panes fast + late (a pane waiting 5 s for its first token)
    alone  the chat page with the slow (or late) endpoint: the slowest pane alone

Rounds interleave the scenarios; the ratio of each round is its N panes against the alone run
of the same round. Goal (issue 9): <= 1.05x. Before the browser runs, each server is timed once
with the raw `openai` client, so a pacing that is not what it claims shows at once.

    .venv/bin/python -m bench.compare_panes [--rounds 3]

It is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402

from bench.stream_overhead import server_process  # noqa: E402
from core.config import PRESETS  # noqa: E402
from tests.fakes.common import reply_tokens  # noqa: E402

API_KEY = "sk-bench-0123456789abcdef"
MODEL = "gpt-4o-mini"
PROMPT = "Race"
GOAL = 1.05
ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored
SYSTEM_CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@dataclass(frozen=True)
class Server:
    """One fake server's pacing, and the answer it streams to PROMPT."""

    name: str
    tokens: int
    rate: float
    first_token_s: float = 0.0

    @property
    def seconds(self) -> float:
        """How long its answer takes by its settings: the first-token wait, then the tokens."""
        return self.first_token_s + (self.tokens - 1) / self.rate

    @property
    def answer(self) -> str:
        return "".join(reply_tokens(PROMPT, self.tokens))


SERVERS = (Server("fast", 200, 100), Server("slow", 1000, 100), Server("mid1", 400, 100),
           Server("mid2", 600, 100), Server("late", 200, 100, first_token_s=5.0))
SCENARIOS = {"two": ("fast", "slow"), "four": ("fast", "slow", "mid1", "mid2"),
             "late": ("fast", "late")}


# -- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_server(server: Server) -> Iterator[str]:
    """`python -m tests.fakes.openai_server` paced as `server` says; yields its /v1 URL."""
    args = ["--port", "0", "--tokens", str(server.tokens), "--rate", str(server.rate),
            "--api-key", API_KEY, "--quiet"]
    if server.first_token_s:
        args += ["--fault", "slow", "--slow-first-token", str(server.first_token_s)]
    with server_process("tests.fakes.openai_server", args) as url:
        yield url


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app(urls: dict[str, str], folder: Path) -> Iterator[str]:
    """`streamlit run` of the app with one named endpoint per fake server; yields its URL."""
    secrets = folder / "secrets.toml"
    secrets.write_text("".join(
        f'[[endpoints]]\nname = "{name}"\npreset = "custom"\nbase_url = "{url}"\n'
        f'api_key = "{API_KEY}"\ndefault_model = "{MODEL}"\n\n' for name, url in urls.items()))
    cleared = {p.key_env for p in PRESETS.values() if p.key_env} | {
        "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "OLLAMA_HOST", "DATABASE_URL",
        "APP_PASSWORD"}
    env = {k: v for k, v in os.environ.items() if k not in cleared}
    env.update(OWNGPT_AUTODETECT_OLLAMA="0", OWNGPT_ENV_FILE=str(folder / "absent.env"),
               DATABASE_URL=f"sqlite:///{folder / 'owngpt.sqlite3'}")
    port = _free_port()
    log = (folder / "stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/_stcore/health", timeout=1).text == "ok":
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((folder / "stderr").read_text())
            time.sleep(0.2)
        yield url
    finally:
        _end(proc)
        log.close()


# -- the page ------------------------------------------------------------------------------------

# Installed before the prompt is sent. Records, on the page's own clock, the Enter that sends
# the prompt, and for each pane when its first tokens and its whole answer are in the DOM.
# A pane is found by its column's title, "(endpoint)"; the chat page has one answer, no columns.
WATCH = """
(specs) => {
  const b = window.__bench = {t0: null, started: specs.map(() => null),
                              done: specs.map(() => null)};
  const norm = (s) => s.replace('\\u258c', '').replace(/\\s+/g, ' ').trim();
  const want = specs.map((s) => norm(s.expected));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && b.t0 === null) b.t0 = performance.now();
  }, true);
  const check = () => {
    if (b.t0 === null) return;
    const now = performance.now();
    const main = document.querySelector('[data-testid="stMain"]') || document.body;
    specs.forEach((s, i) => {
      if (b.done[i] !== null) return;
      const scopes = s.label === null ? [main] : [...main.querySelectorAll(
        '[data-testid="stColumn"]')].filter((c) => c.textContent.includes(s.label));
      for (const scope of scopes) {
        for (const m of scope.querySelectorAll('[data-testid="stMarkdownContainer"]')) {
          const text = norm(m.textContent);
          if (!text.startsWith('Echo')) continue;
          if (b.started[i] === null) b.started[i] = now;
          if (text === want[i]) b.done[i] = now;
        }
      }
    });
  };
  new MutationObserver(check).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}
"""


@dataclass(frozen=True)
class Timing:
    """One run, seconds from the Enter: each pane's first tokens and whole answer on screen."""

    started: list[float]
    done: list[float]

    @property
    def all_done(self) -> float:
        return max(self.done)


def open_page(browser: Browser, url: str) -> Page:
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(url)
    idle(page)
    return page


def idle(page: Page, timeout: float = 30_000) -> None:
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=timeout)


def choose(page: Page, key_part: str, value: str) -> None:
    """Pick `value` in the selectbox whose widget key contains `key_part`."""
    box = page.locator(f"[class*='st-key-{key_part}']").get_by_test_id("stSelectbox")
    box.click()
    page.keyboard.type(value)
    page.keyboard.press("Enter")
    expect(box.get_by_role("combobox")).to_have_value(value)
    idle(page)


def measure(page: Page, specs: list[dict], deadline_s: float) -> Timing:
    """Send PROMPT, wait until every spec's answer is whole on screen; fails at the deadline."""
    page.evaluate(WATCH, specs)
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(PROMPT)
    box.press("Enter")
    try:
        page.wait_for_function("() => window.__bench.done.every((d) => d !== null)",
                               timeout=deadline_s * 1000, polling=200)
    except PlaywrightError:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "compare-bench-timeout.png"), full_page=True)
        print(f"timed out; the page: {ARTIFACTS / 'compare-bench-timeout.png'}; "
              f"state {page.evaluate('window.__bench')}", file=sys.stderr)
        raise
    b = page.evaluate("window.__bench")
    return Timing([(s - b["t0"]) / 1000 for s in b["started"]],
                  [(d - b["t0"]) / 1000 for d in b["done"]])


def run_compare(browser: Browser, url: str, panes: tuple[str, ...]) -> Timing:
    """One comparison of `panes` (endpoint names) on the compare page, on a fresh session."""
    page = open_page(browser, url + "/compare")
    try:
        if len(panes) != 2:
            page.locator("[class*='st-key-cmp_n']").get_by_text(
                str(len(panes)), exact=True).click()
            idle(page)
        for i, name in enumerate(panes):
            current = page.locator(f"[class*='st-key-cmp_ep_{i}']").get_by_role("combobox")
            if current.input_value() != name:
                choose(page, f"cmp_ep_{i}", name)
            choose(page, f"cmp_model_{i}_{name}", MODEL)
        by = {s.name: s for s in SERVERS}
        specs = [{"label": f"({name})", "expected": by[name].answer} for name in panes]
        return measure(page, specs, max(by[n].seconds for n in panes) * 3 + 30)
    finally:
        page.context.close()


def run_alone(browser: Browser, url: str, name: str) -> Timing:
    """The same answer alone: the chat page with only that endpoint's model."""
    page = open_page(browser, url)
    try:
        current = page.locator("[class*='st-key-chat_endpoint']").get_by_role("combobox")
        if current.input_value() != name:
            choose(page, "chat_endpoint", name)
        server = next(s for s in SERVERS if s.name == name)
        return measure(page, [{"label": None, "expected": server.answer}],
                       server.seconds * 3 + 30)
    finally:
        page.context.close()


# -- pacing check, rounds, report ----------------------------------------------------------------


def raw_seconds(url: str) -> tuple[float, float, int]:
    """The server alone through the raw client: first token and last token (s), tokens."""
    client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    started = time.perf_counter()
    first, n = None, 0
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            n += 1
    return first or 0.0, time.perf_counter() - started, n


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:6.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    """Start the fakes and the app, run the interleaved rounds, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.compare_panes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "n/a"
    print(f"compare panes, {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; "
          f"load average {load}; {args.rounds} interleaved rounds")
    results: dict[str, list[Timing]] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(
            prefix="owngpt-bench-") as tmp:
        urls = {s.name: stack.enter_context(fake_server(s)) for s in SERVERS}
        print("pacing check, raw openai client, each server alone:")
        for s in SERVERS:
            first, total, n = raw_seconds(urls[s.name])
            print(f"  {s.name:<5} {n:>5} tokens: first {first:5.2f} s, last {total:5.2f} s "
                  f"(by its settings {s.seconds:5.2f} s)")
        base = stack.enter_context(app(urls, Path(tmp)))
        system = next((p for p in SYSTEM_CHROMIUM if Path(p).exists()), None)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=system, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        run_alone(browser, base, "fast")  # warm-up: first script runs, model lists cached
        run_compare(browser, base, SCENARIOS["two"][:1] + ("mid1",))
        for r in range(args.rounds):
            jobs = [("two", lambda: run_compare(browser, base, SCENARIOS["two"])),
                    ("alone slow", lambda: run_alone(browser, base, "slow")),
                    ("four", lambda: run_compare(browser, base, SCENARIOS["four"])),
                    ("late", lambda: run_compare(browser, base, SCENARIOS["late"])),
                    ("alone late", lambda: run_alone(browser, base, "late"))]
            if r % 2:  # alternate the order, so a trend over the run lands on all alike
                jobs.reverse()
            for name, job in jobs:
                timing = job()
                results.setdefault(name, []).append(timing)
                print(f"  round {r + 1} {name:<10} all on screen {timing.all_done:6.2f} s; "
                      f"per pane done {[round(d, 2) for d in timing.done]}, "
                      f"first tokens {[round(s, 2) for s in timing.started]}", flush=True)
    print()
    print(report(results))
    return 0


def report(results: dict[str, list[Timing]]) -> str:
    """Medians [min-max] of each scenario, its ratio to the alone run, and the verdicts."""
    lines = [f"{'scenario':<34} {'all panes on screen s':>22} {'ratio to alone':>22}"]
    for name, alone_name in (("two", "alone slow"), ("four", "alone slow"),
                             ("late", "alone late")):
        runs, alone = results[name], results[alone_name]
        ratios = [t.all_done / a.all_done for t, a in zip(runs, alone, strict=True)]
        panes = " + ".join(SCENARIOS[name])
        verdict = "PASS" if statistics.median(ratios) <= GOAL else "MISS"
        lines.append(f"{name + ' (' + panes + ')':<34} {spread([t.all_done for t in runs]):>22} "
                     f"{spread(ratios):>21}x  {verdict}")
    for alone_name in ("alone slow", "alone late"):
        lines.append(f"{alone_name + ' (chat page)':<34} "
                     f"{spread([t.all_done for t in results[alone_name]]):>22}")
    two = results["two"]
    early = sum(t.started[1] < t.done[0] for t in two)
    lines.append(f"two: the slow pane's first tokens on screen at "
                 f"{spread([t.started[1] for t in two]).strip()} s, the fast pane done at "
                 f"{spread([t.done[0] for t in two]).strip()} s: before it in {early}/{len(two)}")
    late = results["late"]
    lines.append(f"late: the fast pane done at {spread([t.done[0] for t in late]).strip()} s "
                 f"while the other waited for its first token "
                 f"({spread([t.started[1] for t in late]).strip()} s)")
    lines.append(f"goal: all panes on screen within {GOAL}x of the slowest pane alone")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
