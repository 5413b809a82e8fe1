"""Bradley–Terry ratings from pairwise votes, with bootstrap intervals, and the leaderboard.

Ratings are on an Elo-like scale: a 400-point gap means 10:1 odds of winning, the mean of the
rated models is 1000. Ties count as half a win for each side (as Chatbot Arena does).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from core import store
from core.compare import Outcome, model_key, pairwise_outcomes

BASE, SCALE = 1000.0, 400.0
ROUNDS, SEED = 200, 42
# A virtual half win and half loss against an average player: keeps a model that never won
# (or never lost) at a finite rating, and pulls thin evidence towards the mean.
PRIOR = 0.5


def bradley_terry(outcomes: Sequence[Outcome], models: Sequence[str] | None = None,
                  *, iters: int = 200, tol: float = 1e-9) -> dict[str, float]:
    """Ratings for each model from pairwise outcomes (Hunter's MM iteration)."""
    names = sorted(set(models or []) | {o.model_a for o in outcomes}
                   | {o.model_b for o in outcomes})
    if not names:
        return {}
    idx = {m: i for i, m in enumerate(names)}
    n = len(names)
    wins = np.zeros((n, n))  # wins[i, j]: (half) wins of i over j
    for o in outcomes:
        i, j = idx[o.model_a], idx[o.model_b]
        wins[i, j] += o.score_a
        wins[j, i] += 1.0 - o.score_a
    games = wins + wins.T
    w = wins.sum(axis=1) + PRIOR
    p = np.ones(n)
    for _ in range(iters):
        # The prior's games are against a fixed player of strength 1.
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1) + 2 * PRIOR / (p + 1.0)
        new = w / denom
        new /= math.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    r = SCALE * np.log10(p)
    r += BASE - r.mean()
    return {m: float(r[idx[m]]) for m in names}


def bootstrap(outcomes: Sequence[Outcome], *, rounds: int = ROUNDS,
              seed: int = SEED) -> dict[str, tuple[float, float]]:
    """95% interval of each model's rating over `rounds` resamples of the outcomes."""
    names = sorted({o.model_a for o in outcomes} | {o.model_b for o in outcomes})
    if not outcomes:
        return {}
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in names}
    for _ in range(rounds):
        pick = rng.integers(0, len(outcomes), len(outcomes))
        ratings = bradley_terry([outcomes[k] for k in pick], names)
        for m in names:
            samples[m].append(ratings[m])
    return {m: (float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5)))
            for m, s in samples.items()}


@dataclass
class Row:
    """One leaderboard line."""

    model: str
    rating: float
    low: float
    high: float
    wins: float
    losses: float
    ties: float
    win_rate: float | None
    median_ttft_s: float | None = None
    median_tokens_per_s: float | None = None
    median_cost_usd: float | None = None
    answers: int = 0


def records(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """Wins, losses and ties per model (ties counted once per pair)."""
    rec: dict[str, dict[str, float]] = {}
    for o in outcomes:
        for m, s in ((o.model_a, o.score_a), (o.model_b, 1.0 - o.score_a)):
            r = rec.setdefault(m, {"wins": 0, "losses": 0, "ties": 0})
            r["wins" if s == 1 else "losses" if s == 0 else "ties"] += 1
    return rec


def call_stats(user_id: str, *, eng: Engine | None = None) -> dict[str, dict]:
    """Median TTFT, tokens/s and cost per answer per model, from this user's compare calls.

    Only source 'compare' and status ok: the same prompts for every model, so the speed and
    cost columns compare like with like (chat calls have other prompt lengths).
    """
    c = store.calls
    with (eng or store.engine()).connect() as conn:
        rows = conn.execute(select(c.c.endpoint, c.c.model, c.c.ttft_s, c.c.total_s,
                                   c.c.output_tokens, c.c.cost_usd).where(
            c.c.user_id == user_id, c.c.source == "compare", c.c.status == "ok")).all()
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(model_key(r.endpoint, r.model), []).append(r)
    out = {}
    for key, rs in groups.items():
        ttft = [r.ttft_s for r in rs if r.ttft_s is not None]
        tps = [r.output_tokens / (r.total_s - r.ttft_s) for r in rs
               if r.ttft_s is not None and r.total_s is not None and r.total_s > r.ttft_s
               and r.output_tokens]
        cost = [float(r.cost_usd) for r in rs if r.cost_usd is not None]
        out[key] = {"median_ttft_s": statistics.median(ttft) if ttft else None,
                    "median_tokens_per_s": statistics.median(tps) if tps else None,
                    "median_cost_usd": statistics.median(cost) if cost else None,
                    "answers": len(rs)}
    return out


def leaderboard(user_id: str, *, rounds: int = ROUNDS, seed: int = SEED,
                eng: Engine | None = None) -> list[Row]:
    """This user's models by rating, best first, with wins/losses/ties and call-log medians."""
    outcomes = pairwise_outcomes(user_id, eng=eng)
    ratings = bradley_terry(outcomes)
    ci = bootstrap(outcomes, rounds=rounds, seed=seed)
    rec = records(outcomes)
    stats = call_stats(user_id, eng=eng)
    rows = []
    for m, rating in ratings.items():
        r = rec[m]
        games = r["wins"] + r["losses"] + r["ties"]
        low, high = ci.get(m, (rating, rating))
        rows.append(Row(model=m, rating=rating, low=low, high=high, wins=r["wins"],
                        losses=r["losses"], ties=r["ties"],
                        win_rate=(r["wins"] + 0.5 * r["ties"]) / games if games else None,
                        **stats.get(m, {})))
    rows.sort(key=lambda row: -row.rating)
    return rows
