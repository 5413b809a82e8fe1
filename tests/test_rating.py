"""Bradley–Terry ratings: a known set of votes gives a known order, and the leaderboard."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from core import compare, rating, store
from core.compare import Outcome, Pane


def games(a, b, a_wins, b_wins, ties=0):
    return ([Outcome(a, b, 1.0)] * a_wins + [Outcome(a, b, 0.0)] * b_wins
            + [Outcome(a, b, 0.5)] * ties)


def test_a_known_set_of_votes_gives_a_known_order():
    votes = games("A", "B", 8, 2) + games("B", "C", 8, 2) + games("A", "C", 9, 1)
    r = rating.bradley_terry(votes)
    assert r["A"] > r["B"] > r["C"]
    assert sum(r.values()) / 3 == pytest.approx(1000)


def test_the_scale_is_elo_like_ten_to_one_is_about_400_points():
    r = rating.bradley_terry(games("A", "B", 500, 50))
    assert r["A"] - r["B"] == pytest.approx(400, abs=10)


def test_ties_count_as_half_wins():
    even = rating.bradley_terry(games("A", "B", 0, 0, ties=10))
    assert even["A"] == pytest.approx(even["B"])
    # 3 wins + 4 ties against 3 losses + 4 ties is the same as 5 wins to 5
    mixed = rating.bradley_terry(games("A", "B", 3, 3, ties=4) + games("A", "C", 5, 1))
    plain = rating.bradley_terry(games("A", "B", 5, 5) + games("A", "C", 5, 1))
    assert mixed["A"] - mixed["B"] == pytest.approx(plain["A"] - plain["B"], abs=1e-6)


def test_a_model_that_never_won_has_a_finite_rating():
    r = rating.bradley_terry(games("A", "B", 5, 0))
    assert r["A"] > r["B"] and all(abs(v) < 1e6 for v in r.values())


def test_bootstrap_is_seeded_and_brackets_the_rating():
    votes = games("A", "B", 8, 2) + games("B", "C", 6, 4) + games("A", "C", 9, 1, ties=2)
    ci = rating.bootstrap(votes, rounds=100, seed=1)
    assert ci == rating.bootstrap(votes, rounds=100, seed=1)
    r = rating.bradley_terry(votes)
    for m, (low, high) in ci.items():
        assert low < r[m] < high
    assert ci["A"][0] > ci["C"][1]  # A clearly above C: the intervals do not overlap


def test_records_count_wins_losses_and_ties():
    rec = rating.records(games("A", "B", 2, 1, ties=3))
    assert rec["A"] == {"wins": 2, "losses": 1, "ties": 3}
    assert rec["B"] == {"wins": 1, "losses": 2, "ties": 3}


def _call(conn, user, endpoint, model, *, source="compare", ttft, total, out, cost):
    conn.execute(store.calls.insert().values(
        user_id=user, started_at=datetime.now(UTC), source=source, endpoint=endpoint,
        provider="openai", base_url="http://127.0.0.1", model=model, status="ok",
        output_tokens=out, ttft_s=ttft, total_s=total, cost_usd=cost))


def _battle(user, winner):
    cid = compare.create(user, [Pane("OpenAI", "big"), Pane("Local", "small")])
    turn = compare.start_turn(user, cid, "q")
    for pos in (0, 1):
        compare.save_answer(cid, turn, pos, text="a", status="ok")
    if winner is None:
        compare.vote(user, cid, turn, "tie")
    else:
        compare.vote(user, cid, turn, "win", winner=winner)


def test_the_leaderboard_joins_votes_with_the_users_compare_calls(db):
    for w in (0, 0, 0, 1, None):
        _battle("ana", w)
    _battle("bob", 1)  # another user's vote never counts
    with db.begin() as conn:
        _call(conn, "ana", "OpenAI", "big", ttft=0.5, total=2.5, out=100, cost=Decimal("0.002"))
        _call(conn, "ana", "OpenAI", "big", ttft=1.5, total=3.5, out=200, cost=Decimal("0.004"))
        _call(conn, "ana", "OpenAI", "big", ttft=0.7, total=1.7, out=60, cost=Decimal("0.001"))
        _call(conn, "ana", "Local", "small", ttft=0.1, total=1.1, out=20, cost=Decimal("0"))
        # a chat call and another user's call are left out of the medians
        _call(conn, "ana", "Local", "small", source="chat", ttft=9, total=10, out=1, cost=None)
        _call(conn, "bob", "OpenAI", "big", ttft=9, total=10, out=1, cost=Decimal("9"))
    board = rating.leaderboard("ana", rounds=50)
    assert [row.model for row in board] == ["big @ OpenAI", "small @ Local"]
    big, small = board
    assert (big.wins, big.losses, big.ties) == (3, 1, 1)
    assert big.win_rate == pytest.approx(3.5 / 5)
    assert big.low <= big.rating <= big.high
    assert big.median_ttft_s == pytest.approx(0.7)
    assert big.median_tokens_per_s == pytest.approx(60)  # 50, 100, 60 tokens/s
    assert big.median_cost_usd == pytest.approx(0.002) and big.answers == 3
    assert small.median_ttft_s == pytest.approx(0.1) and small.median_tokens_per_s == 20
    assert small.median_cost_usd == 0
    assert [r.model for r in rating.leaderboard("bob", rounds=10)] == ["small @ Local",
                                                                         "big @ OpenAI"]


def test_an_empty_leaderboard(db):
    assert rating.leaderboard("ana") == []
