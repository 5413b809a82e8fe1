"""The compare flow: panes, blind mode, per-pane threads, answers saved from workers, votes."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import event, select

from core import compare, store
from core.compare import CompareError, Outcome, Pane
from core.config import make_endpoint
from core.metering import Call
from core.providers import Message
from core.runner import Run
from tests.conftest import API_KEY
from tests.timing import WAIT_S

TWO = [Pane("OpenAI", "gpt-4o-mini"), Pane("Local", "llama3.2")]


def answered(cid, turn, statuses, user="ana"):
    """Complete every pane of a turn with the given statuses."""
    for pos, status in enumerate(statuses):
        text = "" if status == "error" else f"answer {pos}"
        compare.save_answer(cid, turn, pos, text=text, status=status,
                            error_kind="auth" if status == "error" else None)


def test_two_to_four_panes_any_mix_same_model_twice_allowed(db):
    same = [Pane("OpenAI", "gpt-4o-mini"), Pane("OpenAI", "gpt-4o-mini")]
    cid = compare.create("ana", same, eng=db)
    comp = compare.load("ana", cid)
    assert [(p.endpoint, p.model) for p in comp.panes] == [("OpenAI", "gpt-4o-mini")] * 2
    four = TWO + [Pane("Azure", "gpt-4o"), Pane("Local", "qwen2.5")]
    assert len(compare.load("ana", compare.create("ana", four)).panes) == 4
    for bad in (TWO[:1], four + [Pane("X", "y")], []):
        with pytest.raises(CompareError) as exc:
            compare.create("ana", bad)
        assert exc.value.reason == "pane_count"


def test_no_prompt_is_refused(db):
    cid = compare.create("ana", TWO)
    with pytest.raises(CompareError) as exc:
        compare.start_turn("ana", cid, "   \n")
    assert exc.value.reason == "no_prompt"


def test_another_user_cannot_open_or_vote(db):
    cid = compare.create("ana", TWO)
    compare.start_turn("ana", cid, "hi")
    for fn in (lambda: compare.load("bob", cid), lambda: compare.start_turn("bob", cid, "x"),
               lambda: compare.vote("bob", cid, 0, "tie")):
        with pytest.raises(CompareError) as exc:
            fn()
        assert exc.value.reason == "not_found"
    assert compare.history("bob") == []


def test_follow_ups_continue_each_panes_own_thread(db):
    cid = compare.create("ana", TWO, system_prompt="Be brief.", per_pane=True)
    with db.begin() as conn:  # pane B has its own system prompt
        conn.execute(store.comparison_panes.update().where(
            store.comparison_panes.c.comparison_id == cid, store.comparison_panes.c.position == 1
        ).values(system_prompt="Be verbose.", params={"temperature": 0.2}))
    t0 = compare.start_turn("ana", cid, "What is 2+2?")
    compare.save_answer(cid, t0, 0, text="4", status="ok")
    compare.save_answer(cid, t0, 1, text="Four, because...", status="ok")
    t1 = compare.start_turn("ana", cid, "And 3+3?")
    assert t1 == 1
    comp = compare.load("ana", cid)
    assert compare.messages_for(comp, 0, t1) == [
        Message("system", "Be brief."), Message("user", "What is 2+2?"),
        Message("assistant", "4"), Message("user", "And 3+3?")]
    assert compare.messages_for(comp, 1, t1)[0] == Message("system", "Be verbose.")
    assert compare.messages_for(comp, 1, t1)[2] == Message("assistant", "Four, because...")
    assert compare.pane_settings(comp, 1)[1].temperature == 0.2
    assert compare.pane_settings(comp, 0)[1].temperature is None
    assert comp.title == "What is 2+2?"


def test_a_failed_pane_keeps_the_user_message_and_skips_the_empty_answer(db):
    cid = compare.create("ana", TWO)
    compare.start_turn("ana", cid, "one")
    answered(cid, 0, ["ok", "error"])
    compare.start_turn("ana", cid, "two")
    comp = compare.load("ana", cid)
    assert [m.role for m in compare.messages_for(comp, 1, 1)] == ["user", "user"]
    assert [m.role for m in compare.messages_for(comp, 0, 1)] == ["user", "assistant", "user"]


def test_a_turn_sent_while_the_comparison_is_read_shows_on_the_next_read(db):
    """Another tab or process sends a turn between load()'s reads of turns and answers."""
    cid = compare.create("ana", TWO)
    sent: list[int] = []

    def send_between(conn, cursor, statement, *args) -> None:
        if "FROM comparison_answers" in statement and not sent:
            sent.append(compare.start_turn("ana", cid, "sent meanwhile"))

    event.listen(db, "before_cursor_execute", send_between)
    try:
        comp = compare.load("ana", cid)
    finally:
        event.remove(db, "before_cursor_execute", send_between)
    assert sent == [0] and comp.turns == []  # as it was when the turns were read
    [turn] = compare.load("ana", cid).turns
    assert turn.prompt == "sent meanwhile" and len(turn.answers) == 2


def test_answers_saved_from_many_threads_at_once_all_land(db):
    four = TWO + [Pane("Azure", "gpt-4o"), Pane("Local", "qwen2.5")]
    cid = compare.create("ana", four)
    turn = compare.start_turn("ana", cid, "go")
    barrier = threading.Barrier(4)

    def save(pos):
        barrier.wait(timeout=WAIT_S)
        compare.save_answer(cid, turn, pos, text=f"pane {pos}", status="ok")

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=WAIT_S)
    answers = compare.load("ana", cid).turns[0].answers
    assert [(a.text, a.status) for a in answers] == [(f"pane {i}", "ok") for i in range(4)]


def test_one_run_saves_each_panes_answer_from_its_worker(db, openai_server):
    good = make_endpoint("Fake", "custom", base_url=openai_server.url, api_key=API_KEY,
                         source="env")
    bad = make_endpoint("Wrong", "custom", base_url=openai_server.url,
                        api_key="sk-wrong-0000000000", source="env")
    cid = compare.create("ana", [Pane("Fake", "gpt-4o-mini"), Pane("Wrong", "gpt-4o-mini")])
    turn = compare.start_turn("ana", cid, "Hello")
    comp = compare.load("ana", cid)
    calls = [Call(ep, "gpt-4o-mini", compare.messages_for(comp, pos, turn), user_id="ana",
                  source="compare", comparison_id=cid) for pos, ep in enumerate((good, bad))]
    position = {id(c): pos for pos, c in enumerate(calls)}
    run = Run(calls, on_end=lambda call: compare.save_call(cid, turn, position[id(call)], call))
    assert run.start().wait(timeout=WAIT_S), "the run did not finish"
    a, b = compare.load("ana", cid).turns[0].answers
    assert a.status == "ok" and a.text and a.call_id is not None
    assert (b.status, b.error_kind) == ("error", "auth") and b.text == ""
    with db.connect() as conn:
        row = conn.execute(select(store.calls).where(store.calls.c.id == a.call_id)).one()
    assert row.status == "ok" and row.source == "compare" and row.comparison_id == cid


def test_blind_mode_assigns_from_the_pool_and_hides_names_until_the_vote(db):
    pool = [("OpenAI", "gpt-4o-mini"), ("Local", "llama3.2"), ("Local", "qwen2.5")]
    cid = compare.create("ana", blind=True, pool=pool, n_panes=2, rng=random.Random(7))
    comp = compare.load("ana", cid)
    picked = [(p.endpoint, p.model) for p in comp.panes]
    assert len(set(picked)) == 2 and set(picked) <= set(pool)
    assignments = {tuple((p.endpoint, p.model) for p in compare.load("ana", compare.create(
        "ana", blind=True, pool=pool, rng=random.Random(seed))).panes) for seed in range(20)}
    assert len(assignments) > 1  # random, not the pool's order
    compare.start_turn("ana", cid, "Tell me a joke")
    with db.begin() as conn:  # the calls' ledger lines exist but stay hidden
        ids = [conn.execute(store.calls.insert().values(
            user_id="ana", started_at=comp.created_at, source="compare", endpoint=e,
            provider="openai", base_url="http://x", model=m, status="ok",
            comparison_id=cid)).inserted_primary_key[0] for e, m in picked]
    for pos, call_id in enumerate(ids):
        compare.save_answer(cid, 0, pos, text="joke", status="ok", call_id=call_id)
    before = compare.public_panes(compare.load("ana", cid))
    assert [p["label"] for p in before] == ["A", "B"]
    assert all(p["model"] is None and p["endpoint"] is None and not p["show_numbers"]
               for p in before)
    assert compare.hidden_call_ids("ana") == set(ids)
    compare.vote("ana", cid, 0, "win", winner=1)
    after = compare.public_panes(compare.load("ana", cid))
    assert [(p["endpoint"], p["model"]) for p in after] == picked
    assert all(p["show_numbers"] for p in after)
    assert compare.hidden_call_ids("ana") == set()


def test_blind_without_a_pool_is_refused(db):
    with pytest.raises(CompareError) as exc:
        compare.create("ana", blind=True, pool=[])
    assert exc.value.reason == "empty_pool"


def test_a_blind_vote_on_panes_that_all_failed_is_refused(db):
    cid = compare.create("ana", blind=True, pool=[("A", "m1"), ("B", "m2")])
    compare.start_turn("ana", cid, "hi")
    answered(cid, 0, ["error", "error"])
    for outcome, winner in (("win", 0), ("tie", None), ("both_bad", None)):
        with pytest.raises(CompareError) as exc:
            compare.vote("ana", cid, 0, outcome, winner)
        assert exc.value.reason == "all_failed"
    assert compare.load("ana", cid).revealed is False  # still hidden


def test_a_vote_while_a_pane_runs_or_for_a_failed_winner_is_refused(db):
    cid = compare.create("ana", TWO)
    compare.start_turn("ana", cid, "hi")
    compare.save_answer(cid, 0, 0, text="hello", status="ok")
    with pytest.raises(CompareError) as exc:
        compare.vote("ana", cid, 0, "tie")
    assert exc.value.reason == "still_running"
    compare.save_answer(cid, 0, 1, text="", status="error", error_kind="connection")
    with pytest.raises(CompareError) as exc:
        compare.vote("ana", cid, 0, "win", winner=1)
    assert exc.value.reason == "winner_failed"
    compare.vote("ana", cid, 0, "win", winner=0)  # the pane that answered may win


def test_voting_twice_on_a_turn_is_refused_and_the_first_vote_stands(db):
    cid = compare.create("ana", TWO)
    compare.start_turn("ana", cid, "hi")
    answered(cid, 0, ["ok", "ok"])
    compare.vote("ana", cid, 0, "win", winner=0)
    with pytest.raises(CompareError) as exc:
        compare.vote("ana", cid, 0, "win", winner=1)
    assert exc.value.reason == "already_voted"
    assert compare.load("ana", cid).turns[0].vote["winner"] == 0
    # a follow-up turn takes its own vote
    compare.start_turn("ana", cid, "again")
    answered(cid, 1, ["ok", "ok"])
    compare.vote("ana", cid, 1, "tie")
    assert [t.vote["outcome"] for t in compare.load("ana", cid).turns] == ["win", "tie"]


def test_bad_outcomes_are_refused(db):
    cid = compare.create("ana", TWO)
    compare.start_turn("ana", cid, "hi")
    answered(cid, 0, ["ok", "ok"])
    for outcome, winner in (("win", None), ("tie", 0), ("best", None), ("win", 5)):
        with pytest.raises(CompareError):
            compare.vote("ana", cid, 0, outcome, winner)


def test_pick_the_best_of_three_is_pairwise_wins_and_both_bad_a_tie(db):
    three = TWO + [Pane("Azure", "gpt-4o")]
    cid = compare.create("ana", three)
    compare.start_turn("ana", cid, "hi")
    answered(cid, 0, ["ok", "ok", "ok"])
    compare.vote("ana", cid, 0, "win", winner=2)
    compare.start_turn("ana", cid, "more")
    answered(cid, 1, ["ok", "ok", "ok"])
    compare.vote("ana", cid, 1, "both_bad")
    g, llama, g4 = "gpt-4o-mini @ OpenAI", "llama3.2 @ Local", "gpt-4o @ Azure"
    assert compare.pairwise_outcomes("ana") == [
        Outcome(g4, g, 1.0), Outcome(g4, llama, 1.0),
        Outcome(g, llama, 0.5), Outcome(g, g4, 0.5), Outcome(llama, g4, 0.5)]
    assert compare.pairwise_outcomes("bob") == []


def test_the_same_model_in_two_panes_is_stored_but_not_rated(db):
    cid = compare.create("ana", [Pane("OpenAI", "m"), Pane("OpenAI", "m")])
    compare.start_turn("ana", cid, "hi")
    answered(cid, 0, ["ok", "ok"])
    compare.vote("ana", cid, 0, "win", winner=1)
    assert compare.load("ana", cid).turns[0].vote["winner"] == 1
    assert compare.pairwise_outcomes("ana") == []


def test_history_lists_newest_first_and_reopens_everything(db):
    first = compare.create("ana", TWO)
    compare.start_turn("ana", first, "first prompt " + "x" * 200)
    second = compare.create("ana", TWO, blind=False)
    compare.start_turn("ana", second, "second prompt")
    answered(second, 0, ["ok", "stopped"])
    compare.vote("ana", second, 0, "tie")
    compare.create("bob", TWO)
    listed = compare.history("ana")
    assert [h["id"] for h in listed] == [second, first]
    assert listed[1]["title"].startswith("first prompt") and len(listed[1]["title"]) == 80
    comp = compare.load("ana", second)
    [turn] = comp.turns
    assert turn.prompt == "second prompt" and turn.vote["outcome"] == "tie"
    assert [(a.text, a.status) for a in turn.answers] == [("answer 0", "ok"),
                                                           ("answer 1", "stopped")]


def test_migration_0004_builds_the_same_tables_as_the_metadata_and_drops_them(tmp_path):
    import importlib.util

    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import create_engine, inspect

    spec = importlib.util.spec_from_file_location(
        "m0004", "core/migrations/versions/0004_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (mod.revision, mod.down_revision) == ("0004", "0003")
    eng = create_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    store.calls.create(eng)
    names = ["comparisons", "comparison_panes", "comparison_turns", "comparison_answers",
             "comparison_votes"]
    with eng.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        mod.upgrade()
    insp = inspect(eng)
    for name in names:
        got = {c["name"]: c["nullable"] for c in insp.get_columns(name)}
        want = {c.name: c.nullable for c in store.metadata.tables[name].columns
                if (name, c.name) != ("comparison_answers", "call_key")}  # added by 0008
        assert got == want, name
    with eng.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        mod.downgrade()
    assert set(inspect(eng).get_table_names()) == {"calls"}
