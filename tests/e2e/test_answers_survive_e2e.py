"""Answers that survive: a server killed mid-answer and started again leaves the answer with its
text, marked interrupted, and the conversation goes on asking each question once; a reload
while an answer streams shows the text so far and goes on updating."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.sync_api import expect
from sqlalchemy import select, update

from core import store
from tests.conftest import API_KEY, call_rows
from tests.e2e.conftest import assistants, choose_model, conversation_id, keyed, send
from tests.timing import WAIT_S, wait_until

INTERRUPTED = "Interrupted: the app stopped before this answer was finished."








def saved_answer_text(db, cid: str) -> str:
    m = store.messages
    with db.connect() as conn:
        return conn.execute(select(m.c.text).where(m.c.conversation_id == cid,
                                                   m.c.role == "assistant")).scalar() or ""


def test_a_server_killed_mid_answer_restarts_with_the_answer_kept_and_asks_each_question_once(
        start_app, tmp_path, browser, e2e_openai):
    db_path = tmp_path / "crash.sqlite3"
    env = {"OPENAI_BASE_URL": e2e_openai.url, "OPENAI_API_KEY": API_KEY}
    app = start_app(db_path, **env)
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    e2e_openai.tokens, e2e_openai.rate = 3000, 40  # 75 s: far longer than the test waits
    try:
        send(page, "Tell me a long story")
        expect(assistants(page).last).to_contain_text("▌")
        cid = conversation_id(page)
        # The app's heartbeat (every 5 s) has written the output so far: the process dies.
        wait_until(lambda: any(r["output_chars"] for r in call_rows(app.db)),
                   what="the call's heartbeat")
        app.process.kill()
        app.process.wait(timeout=WAIT_S)
    finally:
        e2e_openai.tokens, e2e_openai.rate = 40, 80
    kept = saved_answer_text(app.db, cid)
    # A minute later, as far as the dead process's heartbeat goes: the app starts again.
    with app.db.begin() as conn:
        conn.execute(update(store.calls).where(store.calls.c.status == "running").values(
            heartbeat_at=datetime.now(UTC) - timedelta(minutes=2)))
    app = start_app(db_path, **env)
    page = app.open(browser, f"/?c={cid}")
    # Continued from its address: the request carries each question once, and the
    # interrupted answer as the text it has.
    choose_model(page, "gpt-4o-mini")
    send(page, "Go on")
    expect(assistants(page).last).to_contain_text("Echo: Go on")
    expect(assistants(page).last).to_contain_text("tokens/s")
    sent = e2e_openai.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Tell me a long story",
                                                                   "Go on"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert kept.startswith("Echo") and sent[1]["content"].startswith(kept)
    # Above it, the answer the dead process was writing: its text, marked, with Retry.
    page.reload()
    expect(page.get_by_text(INTERRUPTED)).to_be_visible()
    expect(assistants(page).first).to_contain_text(kept[:40])
    expect(keyed(page, "chat_regen_").first.get_by_role("button")).to_be_visible()


def test_a_reload_mid_stream_shows_the_text_so_far_and_keeps_updating(
        start_app, browser, e2e_openai):
    app = start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    e2e_openai.tokens, e2e_openai.rate = 600, 60  # 10 s
    try:
        send(page, "Stream for a while")
        expect(assistants(page).last).to_contain_text("▌")
        page.reload()
        live = assistants(page).last
        expect(live).to_contain_text("Echo: Stream for a while")
        expect(live).to_contain_text("▌")
        before = len(live.inner_text())
        # The page, not reloaded again, goes on showing more of it, then the saved answer.
        wait_until(lambda: len(assistants(page).last.inner_text()) > before + 20,
                   what="the answer to grow on the reloaded page")
        expect(assistants(page).last).to_contain_text("tokens/s")
        expect(assistants(page).last).not_to_contain_text("▌")
    finally:
        e2e_openai.tokens, e2e_openai.rate = 40, 80


def test_a_reload_during_the_first_token_can_still_stop_it(start_app, browser, e2e_openai):
    app = start_app(OPENAI_BASE_URL=e2e_openai.url, OPENAI_API_KEY=API_KEY)
    page = app.open(browser)
    choose_model(page, "fault-slow")  # the first token after 20 s
    send(page, "Wait for it")
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    page.reload()
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    keyed(page, "chat_watch_stop_").get_by_role("button").click()
    expect(page.get_by_text("Stopped. The partial answer is kept.")).to_be_visible()
