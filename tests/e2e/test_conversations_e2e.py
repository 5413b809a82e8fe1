"""Saved conversations in a real browser: they survive a reload and a server restart, a
stopped answer is kept, branches flip, and the Markdown export is what was said."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import API_KEY, call_rows
from tests.e2e.conftest import assistants, choose_model, conversation_id, keyed, send
from tests.timing import WAIT_S

STOPPED = "Stopped. The partial answer is kept."








def test_conversations_survive_reload_and_restart_branch_and_export(
        start_app, tmp_path, browser, e2e_openai):
    db_path = tmp_path / "owngpt.sqlite3"
    env = {"OPENAI_BASE_URL": e2e_openai.url, "OPENAI_API_KEY": API_KEY}
    app = start_app(db_path, **env)
    page = app.open(browser)
    choose_model(page, "gpt-4o-mini")
    send(page, "First saved question")
    expect(assistants(page).last).to_contain_text("tokens/s")
    first = conversation_id(page)

    # A second conversation, stopped midway.
    keyed(page, "convo_new").get_by_role("button").click()
    expect(page).not_to_have_url(re.compile(r"\?c="))
    e2e_openai.tokens, e2e_openai.rate = 300, 150
    try:
        send(page, "Second one, to be stopped")
        expect(assistants(page).last).to_contain_text("▌")
        keyed(page, "owngpt_stop_").get_by_role("button").click()
        expect(page.get_by_text(STOPPED)).to_be_visible()
    finally:
        e2e_openai.tokens, e2e_openai.rate = 40, 80
    second = conversation_id(page)
    assert second != first

    def both_kept(page: Page) -> None:
        expect(keyed(page, f"convo_open_{first}")).to_contain_text("First saved question")
        expect(keyed(page, f"convo_open_{second}")).to_contain_text("Second one")
        expect(page.get_by_text(STOPPED)).to_be_visible()
        expect(assistants(page).last).to_contain_text("Echo: Second one")
        expect(assistants(page).last).not_to_contain_text("▌")

    page.reload()
    both_kept(page)

    # The server restarts on the same database: the address opens the stopped one again.
    app.process.terminate()
    app.process.wait(timeout=WAIT_S)
    app = start_app(db_path, **env)
    page = app.open(browser, f"/?c={second}")
    both_kept(page)
    rows = call_rows(app.db)
    assert {r["conversation_id"] for r in rows} == {first, second}
    assert sorted(r["status"] for r in rows) == ["ok", "stopped"]

    # Regenerate the stopped answer: a second branch, and the arrows flip back to the first.
    keyed(page, "chat_regen_").last.get_by_role("button").click()
    expect(page.get_by_text("2/2")).to_be_visible()
    expect(assistants(page).last).to_contain_text("tokens/s")
    expect(page.get_by_text(STOPPED)).to_have_count(0)
    keyed(page, "chat_prev_").last.get_by_role("button").click()
    expect(page.get_by_text("1/2")).to_be_visible()
    expect(page.get_by_text(STOPPED)).to_be_visible()

    # Export the branch on screen as Markdown.
    page.get_by_test_id("stSidebar").get_by_text("This conversation", exact=True).click()
    with page.expect_download() as download:
        keyed(page, "convo_export_md").get_by_role("button").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert text.startswith("# Second one, to be stopped")
    assert "## User" in text and "Echo: Second one" in text
    assert "Stopped by the user." in text
    assert API_KEY not in text


def test_what_a_stop_a_second_message_or_a_dying_server_leaves_is_saved(
        start_app, tmp_path, browser, e2e_openai):
    app = start_app(tmp_path / "faults.sqlite3", OPENAI_BASE_URL=e2e_openai.url,
                   OPENAI_API_KEY=API_KEY)
    page = app.open(browser)
    # Stop before the first token: the answer is kept as stopped, also after a reload.
    choose_model(page, "fault-slow")
    expect(page.get_by_text("Ready: fault-slow")).to_be_visible()
    send(page, "Stop me before I start")
    expect(page.get_by_text("Waiting for the first token")).to_be_visible()
    keyed(page, "owngpt_stop_").get_by_role("button").click()
    expect(page.get_by_text(STOPPED)).to_be_visible()
    conversation_id(page)
    page.reload()
    expect(page.get_by_text(STOPPED)).to_be_visible()
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("Stop me before")

    # A message sent while an answer streams: the first is kept stopped, the second answered.
    choose_model(page, "gpt-4o-mini")
    e2e_openai.tokens, e2e_openai.rate = 300, 150
    try:
        send(page, "Long one")
        expect(assistants(page).last).to_contain_text("▌")
        send(page, "Next one")
        expect(assistants(page).last).to_contain_text("tokens/s")
    finally:
        e2e_openai.tokens, e2e_openai.rate = 40, 80
    # The server dies mid-answer: the partial answer and the error are kept.
    choose_model(page, "fault-disconnect")
    send(page, "Tell me a long story")
    expect(page.get_by_text("broke off in the middle of the answer")).to_be_visible()
    page.reload()
    expect(page.get_by_text(STOPPED)).to_have_count(2)
    expect(page.get_by_text("broke off in the middle of the answer")).to_be_visible()
    expect(assistants(page)).to_have_count(4)
    expect(assistants(page).nth(2)).to_contain_text("Echo: Next one")
    expect(assistants(page).last).to_contain_text("Echo: Tell me a long story")
    users = page.get_by_test_id("stChatMessage").filter(
        has=page.get_by_test_id("stChatMessageAvatarUser"))
    expect(users).to_have_count(4)  # nothing duplicated
