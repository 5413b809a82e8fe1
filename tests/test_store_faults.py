"""Faults around the database: locked, unwritable, malformed or absent; and who the user is."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import store
from tests.test_app import ENTRY, chat, fake_openai, screen_text  # noqa: F401 - fixture
from tests.timing import WAIT_S, wait_until

PASSWORD = "s3cret-pw-42"


def test_a_write_waits_for_another_writer_and_succeeds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    eng = store.engine(url)
    held, releasing = threading.Event(), threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(tmp_path / "busy.sqlite3")
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(2)  # a writer holding the lock for a few seconds: the fault itself
        releasing.set()
        conn.rollback()
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert held.wait(WAIT_S)
    store.set_preference("alice", "last_model", "m", eng=eng)
    # The write could only land after the other writer let go: it waited, then wrote.
    assert releasing.is_set()
    thread.join(WAIT_S)
    assert store.get_preference("alice", "last_model", eng=eng) == "m"


def test_unwritable_data_folder_says_so_and_chat_still_works(monkeypatch, tmp_path: Path,
                                                            fake_openai) -> None:  # noqa: F811
    # Tests run as root, which writes anywhere; a folder under a FILE is one not even root
    # can create.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{blocker / 'data' / 'owngpt.sqlite3'}")
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.run()
    assert "not writable" in screen_text(at)
    assert "call log is not kept" in screen_text(at)
    chat(at, "gpt-4o-mini", "Hello")
    wait_until(lambda: any(m.name == "assistant" for m in at.run().chat_message),
               what="an answer while the database is unwritable")
    assert not at.exception


def app_with_url(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv("DATABASE_URL", url)
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    return at.run()


def test_malformed_database_url_names_the_setting_not_the_password(monkeypatch) -> None:
    at = app_with_url(monkeypatch, f"nosuchdb://bob:{PASSWORD}@host/x")
    text = screen_text(at)
    assert "DATABASE_URL" in text and "not a valid database address" in text
    assert PASSWORD not in text
    assert not at.exception


def test_database_url_pointing_at_nothing(monkeypatch, tmp_path: Path) -> None:
    at = app_with_url(monkeypatch, f"postgresql://bob:{PASSWORD}@127.0.0.1:1/owngpt")
    text = screen_text(at)
    assert "DATABASE_URL" in text and PASSWORD not in text
    assert not at.exception


def test_auth_configured_but_broken_fails_closed(monkeypatch) -> None:
    at = AppTest.from_file(ENTRY, default_timeout=WAIT_S)
    at.session_state["language"] = "en"
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback",
                          "cookie_secret": "x", "client_id": "", "client_secret": "",
                          "server_metadata_url": ""}
    at.run()
    assert "Sign-in could not be checked" in screen_text(at)
    assert not at.chat_input  # the chat (and the "local" user's history) is not shown


def test_preference_written_by_many_tabs_at_once(tmp_path: Path) -> None:
    # Read-then-insert let two writers both see "absent" and both insert: an IntegrityError.
    eng = store.engine(f"sqlite:///{tmp_path / 'prefs.sqlite3'}")
    errors: list[BaseException] = []
    for round_ in range(15):
        barrier = threading.Barrier(6)

        def write(i: int, name: str = f"p{round_}",
                  barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                store.set_preference("alice", name, i, eng=eng)
            except BaseException as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert store.get_preference("alice", f"p{round_}", eng=eng) in range(6)
    assert errors == []
