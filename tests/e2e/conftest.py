"""The app as a user meets it: `streamlit run` in a subprocess, a real headless Chromium."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from sqlalchemy import Engine

from core import store
from tests.conftest import API_KEY, TEST_ENV, call_rows, config_vars
from tests.fakes import FakeOllamaServer, FakeOpenAIServer
from tests.timing import NEVER_S, POLL_S, WAIT_MS, WAIT_S, wait_until

ROOT = Path(__file__).resolve().parents[2]
# Pictures from the e2e run land in an ignored folder; `python dev.py screenshots` copies the
# README's from there to docs/, so a test run never rewrites a tracked file.
ARTIFACTS = ROOT / "tests" / "artifacts"
SYSTEM_CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# The closed network here refuses Chromium's background calls; these flags keep it quiet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


# Every expect() in the e2e tests waits as long as the suite's one setting says.
expect.set_options(timeout=WAIT_MS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Playwright's Chromium where it was downloaded, else the system's."""
    system = next((p for p in SYSTEM_CHROMIUM if Path(p).exists()), None)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=system, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class RunningApp:
    """One `streamlit run` of OwnGPT with its own environment and database."""

    url: str
    db: Engine
    process: subprocess.Popen
    stderr: Path  # the server's log

    def wait_rows(self, n: int) -> list[dict]:
        """The call log once it holds n rows and the last has ended; fails at the deadline."""
        return self.wait_log(lambda rows: len(rows) >= n and (not rows or
                                                            rows[-1]["status"] != "running"),
                             f"{n} rows in the call log, the last one ended")

    def wait_log(self, check: Callable[[list[dict]], bool], what: str) -> list[dict]:
        """The call log once `check(rows)` holds; fails at the deadline."""
        seen: list[dict] = []

        def ready() -> bool:
            seen[:] = call_rows(self.db)
            return check(seen)

        try:
            wait_until(ready, what=what)
        except pytest.fail.Exception:
            pytest.fail(f"waited for {what}; the log holds {[r['status'] for r in seen]}")
        return seen

    def open(self, browser: Browser, path: str = "", locale: str = "en-US") -> Page:
        context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 860})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(self.url + path)
        settled(page)
        return page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def start_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningApp]]:
    """Start the app with the given environment (and, to restart the same app, the database
    file of an earlier start); every app started is stopped at the end. It is started as
    `python dev.py app` starts it: app.py, streamlit_app.py with the remember-me routes."""
    started: list[RunningApp] = []

    def start(db_path: Path | None = None, **env: str) -> RunningApp:
        folder = tmp_path_factory.mktemp("app")
        port = _free_port()
        db_url = f"sqlite:///{db_path or folder / 'owngpt.sqlite3'}"
        cleared = config_vars()
        clean = {k: v for k, v in os.environ.items() if k not in cleared}
        clean.update(TEST_ENV)
        clean.update(DATABASE_URL=db_url, OWNGPT_ENV_FILE=str(folder / "absent.env"), **env)
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=clean, stdout=subprocess.DEVNULL, stderr=(folder / "stderr").open("w"),
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url + "/_stcore/health", timeout=WAIT_S).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)  # the poll's interval; the deadline fails the start
        else:
            process.kill()
            raise RuntimeError((folder / "stderr").read_text())
        app = RunningApp(url, store.engine(db_url), process, folder / "stderr")
        started.append(app)
        return app

    yield start
    for app in started:
        if app.process.poll() is None:
            app.process.terminate()
            try:
                app.process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                # Seen once at load 6: the compare module's app still shutting down after 30 s.
                # The tests are over; a slow exit is not theirs to fail on.
                app.process.kill()
                app.process.wait(timeout=WAIT_S)


@pytest.fixture(scope="module")
def e2e_openai() -> Iterator[FakeOpenAIServer]:
    """Answers at a visible pace: 40 tokens at 80 tokens/s; fault-slow's first token never
    comes within a test, so only a Stop ends it."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=40, rate=80,
                          slow_first_token=NEVER_S) as server:
        yield server


@pytest.fixture(scope="module")
def e2e_ollama() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer(tokens=20, rate=100) as server:
        yield server


def choose_model(page: Page, model: str) -> None:
    """Pick (or type) a model in the sidebar's model box, as a user does."""
    # Keyed widgets carry their key as a class: language-independent.
    box = page.locator("[class*='st-key-chat_model_']").get_by_test_id("stSelectbox")
    box.click()
    page.keyboard.type(model)
    page.keyboard.press("Enter")
    expect(box.get_by_role("combobox")).to_have_value(model)


def settled(page: Page) -> None:
    """Wait until the script run the last action started has ended."""
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state",
                                                          "notRunning")


def send(page: Page, text: str) -> None:
    """Type a message in the chat box and press Enter."""
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def assistants(page: Page) -> Locator:
    """The assistant's messages on the page, oldest first."""
    return page.get_by_test_id("stChatMessage").filter(
        has=page.get_by_test_id("stChatMessageAvatarAssistant"))


def keyed(page: Page, prefix: str) -> Locator:
    """Widgets whose key starts with `prefix` (Streamlit puts the key in a class)."""
    return page.locator(f"[class*='st-key-{prefix}']")


def conversation_id(page: Page) -> str:
    """The open conversation's id, from the page's address once it has one."""
    expect(page).to_have_url(re.compile(r"\?c="))
    return re.search(r"[?&]c=([^&]+)", page.url).group(1)


def screenshot(page: Page, name: str) -> Path:
    """Keep a picture of the real app under tests/artifacts/ (the README's come from here)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path
