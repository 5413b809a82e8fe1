"""The compare page driven by AppTest against the fake OpenAI server."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import select

from core import store
from tests.conftest import API_KEY, call_rows
from tests.test_app import app, screen_text


@pytest.fixture
def fake_openai(monkeypatch, openai_server):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return openai_server


def compare_page(at):
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    return at


def two_panes(prompt: str):
    """The compare page with gpt-4o-mini and gpt-4o side by side, after one prompt."""
    at = compare_page(app().run())
    at.selectbox(key="cmp_model_0_OpenAI-compatible").set_value("gpt-4o-mini")
    at.selectbox(key="cmp_model_1_OpenAI-compatible").set_value("gpt-4o")
    return at.chat_input[0].set_value(prompt).run()


def test_two_panes_answer_show_numbers_and_a_vote_reaches_the_leaderboard(db, fake_openai):
    at = two_panes("Compare this")
    assert not at.exception, at.exception
    rows = call_rows(db)
    assert {r["model"] for r in rows} == {"gpt-4o-mini", "gpt-4o"}
    assert all(r["source"] == "compare" and r["status"] == "ok" for r in rows)
    assert len({r["comparison_id"] for r in rows}) == 1
    assert "gpt-4o-mini" in screen_text(at) and at.dataframe  # names and numbers shown
    at.button(key=[b.key for b in at.button if b.key and "_win_0" in b.key][0]).click().run()
    assert not at.exception, at.exception
    with db.connect() as conn:
        [vote] = conn.execute(select(store.comparison_votes)).all()
    assert (vote.outcome, vote.winner) == ("win", 0)
    assert "Vote recorded." in screen_text(at)
    board = at.dataframe[0].value
    assert list(board.iloc[:, 0])[0].startswith("gpt-4o-mini")


def test_blind_mode_hides_names_until_the_vote(db, fake_openai):
    at = compare_page(app().run())
    at.toggle(key="cmp_blind").set_value(True).run()
    at.multiselect(key="cmp_pool").set_value(
        ["gpt-4o-mini @ OpenAI-compatible", "gpt-4o @ OpenAI-compatible"]).run()
    at.chat_input[0].set_value("Blind question").run()
    assert not at.exception, at.exception
    text = screen_text(at)
    assert "gpt-4o" not in text and not at.dataframe
    at.button(key=[b.key for b in at.button if b.key and b.key.endswith("_tie_None")][0]
              ).click().run()
    assert "gpt-4o" in screen_text(at)


def test_a_blind_pane_failing_says_only_what_failed_until_the_vote(db, fake_openai):
    # The fake's 429 says "Rate limit reached for fault-429 in organization ...".
    at = compare_page(app().run())
    at.toggle(key="cmp_blind").set_value(True).run()
    at.multiselect(key="cmp_pool").set_value(
        ["fault-429 @ OpenAI-compatible", "gpt-4o-mini @ OpenAI-compatible"]).run()
    at.chat_input[0].set_value("Blind question").run()
    assert not at.exception, at.exception
    [failed] = at.error
    assert "rate limit" in failed.value
    shown = screen_text(at)
    for clue in ("fault-429", "gpt-4o", fake_openai.url, "127.0.0.1", "Rate limit reached",
                 "req_", "HTTP 429"):
        assert clue not in shown, clue
    at.button(key=[b.key for b in at.button if b.key and b.key.endswith("_tie_None")][0]
              ).click().run()
    assert not at.exception, at.exception
    assert "fault-429" in " ".join(e.value for e in at.error)  # the vote reveals it all


def test_a_failing_pane_shows_its_sentence_the_other_finishes_and_follow_ups_continue(
        db, fake_openai):
    at = compare_page(app().run())
    at.selectbox(key="cmp_model_0_OpenAI-compatible").set_value("gpt-4o-mini")
    at.selectbox(key="cmp_model_1_OpenAI-compatible").set_value("fault-context")
    at.chat_input[0].set_value("A long prompt").run()
    assert not at.exception, at.exception
    assert "too long" in " ".join(e.value for e in at.error)  # the error sentence, pane B
    statuses = sorted((r["model"], r["status"]) for r in call_rows(db))
    assert statuses == [("fault-context", "error"), ("gpt-4o-mini", "ok")]
    at.chat_input[0].set_value("And a follow-up").run()
    assert not at.exception, at.exception
    with db.connect() as conn:
        answers = conn.execute(select(store.comparison_answers).order_by(
            store.comparison_answers.c.turn, store.comparison_answers.c.position)).all()
    assert [(a.turn, a.position, a.status) for a in answers] == [
        (0, 0, "ok"), (0, 1, "error"), (1, 0, "ok"), (1, 1, "error")]
    assert "And a follow-up" in screen_text(at)


def test_settings_per_pane_are_saved_and_sent_to_that_pane_only(db, fake_openai):
    at = compare_page(app().run())
    at.toggle(key="cmp_per_pane").set_value(True).run()
    at.selectbox(key="cmp_model_0_OpenAI-compatible").set_value("gpt-4o-mini")
    at.selectbox(key="cmp_model_1_OpenAI-compatible").set_value("gpt-4o")
    at.text_area(key="cmp_system_1").set_value("Answer like a pirate.")
    at.number_input(key="cmp_temp_1").set_value(0.3)
    at.chat_input[0].set_value("Ahoy").run()
    assert not at.exception, at.exception
    with db.connect() as conn:
        panes = conn.execute(select(store.comparison_panes).order_by(
            store.comparison_panes.c.position)).all()
    assert [(p.system_prompt, p.params) for p in panes] == [
        (None, None), ("Answer like a pirate.", {"temperature": 0.3})]
    systems = [m["content"] for body in fake_openai.requests[-2:]
               for m in body.get("messages", []) if m["role"] == "system"]
    assert systems == ["Answer like a pirate."]


@pytest.fixture
def fake_ollama(monkeypatch, ollama_server):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.base_url)
    return ollama_server


def test_the_history_reopens_a_past_comparison_with_its_answers_and_vote(db, fake_openai):
    at = two_panes("Remember me")
    at.button(key=[b.key for b in at.button if b.key and b.key.endswith("_tie_None")][0]
              ).click().run()
    assert not at.exception, at.exception
    # Another session (a reload, another day): nothing open until the history is clicked.
    later = compare_page(app().run())
    assert "Echo: Remember me" not in screen_text(later)
    [entry] = [b for b in later.sidebar.button if b.key and b.key.startswith("cmp_hist_")]
    assert entry.label == "Remember me"
    entry.click().run()
    assert not later.exception, later.exception
    text = screen_text(later)
    assert text.count("Echo: Remember me") == 2  # both panes' answers
    assert "gpt-4o-mini (OpenAI-compatible)" in text and "gpt-4o (OpenAI-compatible)" in text
    assert "Vote recorded. Tie" in text  # the verdict itself, and no buttons to vote again
    assert not [b for b in later.button if b.key and b.key.startswith("cmp_vote_")]


def test_two_models_on_one_ollama_server_get_the_queue_note(db, fake_ollama):
    at = compare_page(app().run())
    at.selectbox(key="cmp_model_0_Ollama").set_value("llama3.2:1b")
    at.selectbox(key="cmp_model_1_Ollama").set_value("llama3.2:1b").run()
    assert not [i for i in at.info if "Ollama queues" in i.value]  # one model: nothing to swap
    at.selectbox(key="cmp_model_1_Ollama").set_value("qwen3:0.6b").run()
    assert [i for i in at.info if "Ollama queues or swaps them" in i.value]


def test_an_ollama_pane_shows_its_load_time_apart_from_the_first_token(db, fake_ollama):
    at = compare_page(app().run())
    at.selectbox(key="cmp_model_0_Ollama").set_value("llama3.2:1b")
    at.selectbox(key="cmp_model_1_Ollama").set_value("qwen3:0.6b")
    at.chat_input[0].set_value("How long did loading take").run()
    assert not at.exception, at.exception
    numbers = at.dataframe[0].value
    assert list(numbers.columns[:3]) == ["First token (s)", "Total (s)", "Model load (s)"]
    rows = {r["model"]: r for r in call_rows(db)}
    for label, model in (("A · llama3.2:1b", "llama3.2:1b"), ("B · qwen3:0.6b", "qwen3:0.6b")):
        assert numbers.loc[label, "Model load (s)"] == pytest.approx(0.001)  # the fake's 1 ms
        assert numbers.loc[label, "First token (s)"] == pytest.approx(rows[model]["ttft_s"])
        assert rows[model]["load_s"] == pytest.approx(0.001)


def test_a_failed_pane_is_never_highlighted_as_the_best():
    """A pane that failed at once took 0 s and cost $0: that is no record to highlight."""
    from core.i18n import t
    from core.ui.compare import styled_numbers

    cols = [t("compare.ttft"), t("compare.total"), t("compare.tps"), t("compare.cost")]
    df = pd.DataFrame([[0.4, 2.0, 50.0, 0.002], [0.0, 0.0, None, 0.0]],
                      index=["A · gpt-4o-mini", "B · broken"], columns=cols)
    df.attrs["finished"] = ["A · gpt-4o-mini"]
    rules = styled_numbers(df).to_html().split("</style>")[0]  # the highlighted cells' CSS
    assert "row0_col" in rules and "row1_col" not in rules


def test_a_pane_goes_on_in_chat_as_a_new_conversation_with_its_thread(db, fake_openai):
    from core import conversations, conversations_list

    at = two_panes("Carry me over")
    [go_on] = [b for b in at.button if b.key and b.key.startswith("cmp_continue_")
               and b.key.endswith("_1")]
    go_on.click().run()
    assert not at.exception, at.exception
    [summary] = conversations_list.list_conversations("local")
    thread = conversations.path("local", summary.id)
    assert [m.role for m in thread] == ["user", "assistant"]
    assert thread[0].text == "Carry me over" and thread[1].text.startswith("Echo: Carry me over")
    assert summary.model == "gpt-4o"
    assert summary.id in str(at.query_params.get("c"))  # the chat page opened it


def test_a_turn_reopened_while_it_streams_goes_on_and_can_be_stopped(db, monkeypatch):
    from core import compare
    from core.config import make_endpoint
    from tests.fakes import FakeOpenAIServer
    from tests.timing import WAIT_S, wait_until

    with FakeOpenAIServer(api_key=API_KEY, tokens=1000, rate=50, slow_first_token=600) as slow:
        monkeypatch.setenv("OPENAI_BASE_URL", slow.url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        endpoint = make_endpoint("OpenAI-compatible", "openai", base_url=slow.url,
                                 api_key=API_KEY, source="env")
        cid = compare.create("local", [compare.Pane(endpoint.name, "gpt-4o-mini"),
                                       compare.Pane(endpoint.name, "fault-slow")])
        live = compare.send("local", cid, "Tell me a long story", {endpoint.name: endpoint})
        try:
            # Pane A mid-stream, pane B still waiting for its first token.
            wait_until(lambda: len(live.run.calls[0].text) > 20, what="part of pane A")
            at = compare_page(app().run())
            at.session_state["cmp_id"] = cid
            at.run()
            assert not at.exception, at.exception
            shown = [m.value for m in at.markdown]
            assert any(v.startswith("Echo: Tell me a long story") and v.endswith(" ▌")
                       for v in shown)
            assert ":gray[Waiting for the first token…]" in shown
            at.button(key=f"cmp_watch_stop_{cid}_0").click().run()
        finally:
            live.run.stop()
        assert live.run.wait(WAIT_S)
        at.run()
        answers = compare.load("local", cid).turns[0].answers
        assert [a.status for a in answers] == ["stopped", "stopped"]
        assert screen_text(at).count("Stopped: the partial answer is kept.") == 2
