"""The compare flow without streamlit: comparisons, their panes, turns, answers and votes.

Every function that reads or writes a user's data takes `user_id`; `save_answer` is called from
the worker thread when a pane's call ends and opens its own connection from the engine pool.
A turn's answers exist from the moment it is sent (`send`): running, linked to their calls,
their text written with the calls' heartbeat, settled as interrupted with their calls if the
process dies (`metering.mark_interrupted`).
"""

from __future__ import annotations

import contextlib
import functools
import random
import secrets
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from core import store, writes
from core.config import Endpoint
from core.metering import Call
from core.providers import Message, Params
from core.runner import Run

MIN_PANES, MAX_PANES = 2, 4
OUTCOMES = ("win", "tie", "both_bad")
TITLE_CHARS = 80


class CompareError(ValueError):
    """A request the flow refuses; `reason` is a locale key suffix the page can show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Pane:
    """One pane: where its answers come from and, when per-pane, its own settings."""

    endpoint: str
    model: str
    system_prompt: str | None = None
    params: dict[str, Any] | None = None
    position: int = 0


@dataclass
class Answer:
    """One pane's answer to one turn."""

    position: int
    text: str = ""
    reasoning: str = ""
    status: str = "running"
    error_kind: str | None = None
    call_id: int | None = None


@dataclass
class Turn:
    """A prompt sent to every pane, their answers and the vote, if any."""

    turn: int
    prompt: str
    answers: list[Answer] = field(default_factory=list)
    vote: dict[str, Any] | None = None


@dataclass
class Comparison:
    """A comparison as saved, reopened from history."""

    id: str
    user_id: str
    created_at: datetime
    title: str
    blind: bool
    system_prompt: str
    params: dict[str, Any]
    per_pane: bool
    panes: list[Pane]
    turns: list[Turn]

    @property
    def revealed(self) -> bool:
        """Names and numbers may be shown: not blind, or a vote has been cast."""
        return not self.blind or any(t.vote for t in self.turns)


def pane_label(position: int) -> str:
    """A, B, C, D: the name a pane has before (and besides) its model's."""
    return chr(ord("A") + position)


def _eng(eng: Engine | None) -> Engine:
    return eng or store.engine()


def create(
    user_id: str,
    panes: list[Pane] | None = None,
    *,
    system_prompt: str = "",
    params: dict[str, Any] | None = None,
    per_pane: bool = False,
    blind: bool = False,
    pool: list[tuple[str, str]] | None = None,
    n_panes: int = 2,
    rng: random.Random | None = None,
    eng: Engine | None = None,
) -> str:
    """Save a new comparison and return its id.

    Open mode takes `panes` (2–4, any endpoints, the same model twice allowed). Blind mode
    takes a `pool` of (endpoint, model) and assigns `n_panes` of them at random; a pool
    smaller than the panes repeats models rather than refusing.
    """
    if blind:
        if not pool:
            raise CompareError("empty_pool")
        if not MIN_PANES <= n_panes <= MAX_PANES:
            raise CompareError("pane_count")
        rng = rng or random.SystemRandom()
        picked = (rng.sample(pool, n_panes) if len(pool) >= n_panes
                  else [rng.choice(pool) for _ in range(n_panes)])
        panes = [Pane(endpoint=e, model=m) for e, m in picked]
    if not panes or not MIN_PANES <= len(panes) <= MAX_PANES:
        raise CompareError("pane_count")
    cid = secrets.token_hex(16)
    with _eng(eng).begin() as conn:
        conn.execute(store.comparisons.insert().values(
            id=cid, user_id=user_id, created_at=datetime.now(UTC), title="", blind=blind,
            system_prompt=system_prompt, params=params or {}, per_pane=per_pane))
        for i, pane in enumerate(panes):
            conn.execute(store.comparison_panes.insert().values(
                comparison_id=cid, position=i, endpoint=pane.endpoint, model=pane.model,
                system_prompt=pane.system_prompt, params=pane.params))
    return cid


def _owned(conn: Any, user_id: str, cid: str) -> Any:
    row = conn.execute(select(store.comparisons).where(
        store.comparisons.c.id == cid, store.comparisons.c.user_id == user_id)).first()
    if row is None:
        raise CompareError("not_found")
    return row


def start_turn(user_id: str, cid: str, prompt: str, *, eng: Engine | None = None) -> int:
    """Record a prompt for every pane (answers running) and return its turn index."""
    if not prompt.strip():
        raise CompareError("no_prompt")
    with _eng(eng).begin() as conn:
        _owned(conn, user_id, cid)
        turns = store.comparison_turns
        last = conn.execute(select(turns.c.turn).where(turns.c.comparison_id == cid)
                            .order_by(turns.c.turn.desc())).first()
        turn = 0 if last is None else last[0] + 1
        conn.execute(turns.insert().values(comparison_id=cid, turn=turn, prompt=prompt,
                                           created_at=datetime.now(UTC)))
        if turn == 0:
            conn.execute(store.comparisons.update().where(store.comparisons.c.id == cid)
                         .values(title=" ".join(prompt.split())[:TITLE_CHARS]))
        positions = conn.execute(select(store.comparison_panes.c.position).where(
            store.comparison_panes.c.comparison_id == cid)).scalars().all()
        for pos in positions:
            conn.execute(store.comparison_answers.insert().values(
                comparison_id=cid, turn=turn, position=pos, text="", reasoning="",
                status="running"))
    return turn


def save_answer(cid: str, turn: int, position: int, *, text: str, reasoning: str = "",
                status: str, error_kind: str | None = None, call_id: int | None = None,
                key: str | None = None, eng: Engine | None = None) -> None:
    """Complete one pane's answer. Safe from any thread: one short transaction of its own.

    No user_id: the worker only knows the ids the page created for this user's comparison.
    Written through the write queue (`core.writes`): a locked database is retried, and past
    its retry window `writes.NotSavedYet` is raised while the answer stays queued. `key` is the
    call's (`Call.key`): it names the write and finds the call's row if that was written later.
    """
    if status not in store.STATUSES:
        raise ValueError(f"unknown status {status!r}")
    key = key or secrets.token_hex(16)
    values = {"text": text, "reasoning": reasoning, "status": status,
              "error_kind": error_kind, "call_id": call_id}
    writes.write(f"answer:{key}", functools.partial(_save_answer, cid, turn, position, values,
                                                    key),
                 eng=eng, what="compare answer", comparison_id=cid)


def _save_answer(cid: str, turn: int, position: int, values: dict[str, Any], key: str,
                 conn: Connection) -> None:
    a = store.comparison_answers
    if values["call_id"] is None:  # its call's row may have been written after it ended
        values = {**values, "call_id": conn.execute(select(store.calls.c.id).where(
            store.calls.c.call_key == key)).scalar()}
    # The same values whenever it is written: a retry writes nothing twice.
    conn.execute(a.update().where(
        a.c.comparison_id == cid, a.c.turn == turn, a.c.position == position).values(**values))


def save_call(cid: str, turn: int, position: int, call: Any, *,
              eng: Engine | None = None) -> None:
    """`save_answer` from a finished metering.Call (what Run's on_end hands over)."""
    error = getattr(call, "error", None)
    save_answer(cid, turn, position, text=call.text or "",
                reasoning=getattr(call, "reasoning", "") or "",
                status=call.status, error_kind=error.kind.value if error else None,
                call_id=call.row_id, key=getattr(call, "key", None), eng=eng)


@dataclass
class LiveTurn:
    """A turn being answered: its run (one call per pane) and each call's pane."""

    cid: str
    turn: int
    run: Run
    positions: dict[int, int]  # id(call) -> the pane's position

    def position(self, call: Call) -> int:
        """The pane a call of the run answers for."""
        return self.positions[id(call)]


# The turns being answered in this process, by (comparison id, turn).
_live: dict[tuple[str, int], LiveTurn] = {}
_live_lock = threading.Lock()


def send(user_id: str, cid: str, prompt: str, endpoints: Mapping[str, Endpoint], *,
         eng: Engine | None = None) -> LiveTurn:
    """Record `prompt` as the next turn and send it to every pane at once through one Run.

    Each answer is linked to its call before anything is sent and written with its heartbeat;
    the run's worker saves each as its call ends (a Stop or a rerun loses nothing). A pane
    whose endpoint (by name in `endpoints`) is gone fails at once.
    """
    turn = start_turn(user_id, cid, prompt, eng=eng)
    comp = load(user_id, cid, eng=eng)
    calls: list[Call] = []
    positions: dict[int, int] = {}
    for pane in comp.panes:
        endpoint = endpoints.get(pane.endpoint)
        if endpoint is None:  # the endpoint was removed since: the pane fails visibly
            save_answer(cid, turn, pane.position, text="", status="error",
                        error_kind="config", eng=eng)
            continue
        _, params = pane_settings(comp, pane.position)
        call = Call(endpoint, pane.model, messages_for(comp, pane.position, turn), params,
                    user_id=user_id, source="compare", comparison_id=cid, eng=eng)
        call.on_beat = functools.partial(beat, cid, turn, pane.position)
        positions[id(call)] = pane.position
        calls.append(call)
    _link_calls(cid, turn, {positions[id(c)]: c.key for c in calls}, eng=eng)
    live: LiveTurn

    def on_end(call: Call) -> None:  # worker thread: saving survives a Stop or a rerun
        with contextlib.suppress(writes.NotSavedYet):  # kept and saved later; said so
            save_call(cid, turn, positions[id(call)], call, eng=eng)
        if all(c.ended for c in live.run.calls):
            with _live_lock:
                _live.pop((cid, turn), None)

    live = LiveTurn(cid, turn, Run(calls, on_end=on_end), positions)
    if calls:
        with _live_lock:
            _live[(cid, turn)] = live
    live.run.start()
    return live


def live_turn(cid: str, turn: int) -> LiveTurn | None:
    """The turn of comparison `cid` being answered in this process; None when none is (or
    another process answers it)."""
    with _live_lock:
        return _live.get((cid, turn))


def _link_calls(cid: str, turn: int, keys: dict[int, str], *, eng: Engine | None) -> None:
    a = store.comparison_answers
    with _eng(eng).begin() as conn:
        for position, key in keys.items():
            conn.execute(a.update().where(a.c.comparison_id == cid, a.c.turn == turn,
                                          a.c.position == position).values(call_key=key))


def beat(cid: str, turn: int, position: int, text: str, reasoning: str,
         conn: Connection) -> None:
    """A running answer's text so far, written with its call's heartbeat (in the heartbeat's
    transaction); an answer that has ended is left alone."""
    a = store.comparison_answers
    conn.execute(a.update().where(a.c.comparison_id == cid, a.c.turn == turn,
                                  a.c.position == position, a.c.status == "running")
                 .values(text=text, reasoning=reasoning))


def load(user_id: str, cid: str, *, eng: Engine | None = None) -> Comparison:
    """A comparison with all its panes, turns, answers and votes."""
    with _eng(eng).connect() as conn:
        row = _owned(conn, user_id, cid)
        p, t, a, v = (store.comparison_panes, store.comparison_turns,
                      store.comparison_answers, store.comparison_votes)
        panes = [Pane(endpoint=r.endpoint, model=r.model, system_prompt=r.system_prompt,
                      params=r.params, position=r.position)
                 for r in conn.execute(select(p).where(p.c.comparison_id == cid)
                                       .order_by(p.c.position))]
        turns = {r.turn: Turn(turn=r.turn, prompt=r.prompt)
                 for r in conn.execute(select(t).where(t.c.comparison_id == cid)
                                       .order_by(t.c.turn))}
        # Each SELECT sees what is committed when it runs: a turn sent (by another tab or
        # process) after the turns were read shows on the next load, its answers not before.
        seen = list(turns)
        for r in conn.execute(select(a).where(a.c.comparison_id == cid, a.c.turn.in_(seen))
                              .order_by(a.c.turn, a.c.position)):
            turns[r.turn].answers.append(Answer(
                position=r.position, text=r.text, reasoning=r.reasoning, status=r.status,
                error_kind=r.error_kind, call_id=r.call_id))
        for r in conn.execute(select(v).where(v.c.comparison_id == cid, v.c.turn.in_(seen))):
            turns[r.turn].vote = {"outcome": r.outcome, "winner": r.winner,
                                  "voted_at": r.voted_at}
    return Comparison(id=row.id, user_id=row.user_id, created_at=row.created_at,
                      title=row.title, blind=row.blind, system_prompt=row.system_prompt,
                      params=row.params or {}, per_pane=row.per_pane, panes=panes,
                      turns=list(turns.values()))


def history(user_id: str, *, limit: int = 50, eng: Engine | None = None) -> list[dict]:
    """This user's comparisons, newest first: id, title, created_at, blind, pane count."""
    c, p = store.comparisons, store.comparison_panes
    with _eng(eng).connect() as conn:
        rows = conn.execute(select(c).where(c.c.user_id == user_id)
                            .order_by(c.c.created_at.desc(), c.c.id).limit(limit)).all()
        out = []
        for r in rows:
            n = len(conn.execute(select(p.c.id).where(p.c.comparison_id == r.id)).all())
            out.append({"id": r.id, "title": r.title, "created_at": r.created_at,
                        "blind": r.blind, "panes": n})
    return out


def pane_settings(comp: Comparison, position: int) -> tuple[str, Params]:
    """The system prompt and Params pane `position` uses: its own when per-pane, else shared."""
    pane = comp.panes[position]
    system, params = comp.system_prompt, comp.params
    if comp.per_pane:
        system = pane.system_prompt if pane.system_prompt is not None else system
        params = pane.params if pane.params is not None else params
    return system, Params(**(params or {}))


def messages_for(comp: Comparison, position: int, turn: int) -> list[Message]:
    """What pane `position` sends at `turn`: its system prompt, its own thread, the prompt.

    Each pane continues its own answers; an earlier turn the pane failed on keeps the user's
    message (so the thread reads as the user wrote it) and skips the empty answer.
    """
    system, _ = pane_settings(comp, position)
    messages = [Message("system", system)] if system.strip() else []
    for t in comp.turns:
        if t.turn > turn:
            break
        messages.append(Message("user", t.prompt))
        if t.turn == turn:
            break
        answer = next((a for a in t.answers if a.position == position), None)
        if answer is not None and answer.text:
            messages.append(Message("assistant", answer.text))
    return messages


def pane_thread(comp: Comparison, position: int) -> list[Message]:
    """Pane `position`'s whole thread so far, its system prompt first: what goes on in chat."""
    if not comp.turns:
        return []
    last = comp.turns[-1]
    messages = messages_for(comp, position, last.turn)
    answer = next((a for a in last.answers if a.position == position), None)
    if answer is not None and answer.text:
        messages.append(Message("assistant", answer.text))
    return messages


def public_panes(comp: Comparison) -> list[dict[str, Any]]:
    """What the page may show for each pane: in blind mode before the vote, only its letter.

    `show_numbers` also says whether the pane's timings, tokens, cost and ledger line may show.
    """
    shown = comp.revealed
    return [{"position": p.position, "label": pane_label(p.position),
             "endpoint": p.endpoint if shown else None,
             "model": p.model if shown else None,
             "show_numbers": shown} for p in comp.panes]


def hidden_call_ids(user_id: str, *, eng: Engine | None = None) -> set[int]:
    """Call-log rows the ledger must not show yet: blind comparisons without a vote."""
    c, a, v = store.comparisons, store.comparison_answers, store.comparison_votes
    voted = select(v.c.comparison_id).where(v.c.user_id == user_id)
    with _eng(eng).connect() as conn:
        ids = conn.execute(select(a.c.call_id).join(c, c.c.id == a.c.comparison_id).where(
            c.c.user_id == user_id, c.c.blind.is_(True), a.c.call_id.is_not(None),
            c.c.id.not_in(voted))).scalars().all()
    return set(ids)


def vote(user_id: str, cid: str, turn: int, outcome: str, winner: int | None = None, *,
         eng: Engine | None = None) -> None:
    """Record the user's verdict on one turn.

    outcome "win" needs the winning pane's position (with more than two panes: the best one,
    counted as a win over each other pane); "tie" and "both_bad" take none. A second vote on
    the same turn is refused (`already_voted`): in blind mode the first vote reveals the names,
    so a changed vote would no longer be blind. Refused too: a turn still running, a turn on
    which every pane failed (`all_failed`), and a winner whose answer failed.
    """
    if outcome not in OUTCOMES:
        raise CompareError("bad_outcome")
    if (outcome == "win") != (winner is not None):
        raise CompareError("bad_outcome")
    a, v = store.comparison_answers, store.comparison_votes
    with _eng(eng).begin() as conn:
        _owned(conn, user_id, cid)
        answers = {r.position: r for r in conn.execute(
            select(a).where(a.c.comparison_id == cid, a.c.turn == turn))}
        if not answers:
            raise CompareError("not_found")
        if any(r.status == "running" for r in answers.values()):
            raise CompareError("still_running")
        if all(r.status in ("error", "interrupted") or not r.text for r in answers.values()):
            raise CompareError("all_failed")
        if winner is not None:
            if winner not in answers:
                raise CompareError("bad_outcome")
            if answers[winner].status in ("error", "interrupted"):
                raise CompareError("winner_failed")
        if conn.execute(select(v.c.id).where(v.c.comparison_id == cid,
                                             v.c.turn == turn)).first():
            raise CompareError("already_voted")
        conn.execute(v.insert().values(comparison_id=cid, user_id=user_id, turn=turn,
                                       outcome=outcome, winner=winner,
                                       voted_at=datetime.now(UTC)))


@dataclass(frozen=True)
class Outcome:
    """One pairwise result: score_a is 1 (a won), 0 (b won) or 0.5 (tie)."""

    model_a: str
    model_b: str
    score_a: float


def model_key(endpoint: str, model: str) -> str:
    """How a rated model is named: the same model behind two endpoints rates apart."""
    return f"{model} @ {endpoint}"


def pairwise_outcomes(user_id: str, *, eng: Engine | None = None) -> list[Outcome]:
    """Every vote of this user as pairwise outcomes.

    A win beats each other pane; tie and both_bad are a half win for each pair. A pair of
    panes with the same model (and endpoint) is left out: it says nothing about the model.
    """
    c, p, v = store.comparisons, store.comparison_panes, store.comparison_votes
    with _eng(eng).connect() as conn:
        votes = conn.execute(select(v).join(c, c.c.id == v.c.comparison_id)
                             .where(c.c.user_id == user_id).order_by(v.c.id)).all()
        panes: dict[str, dict[int, str]] = {}
        for cid in {r.comparison_id for r in votes}:
            panes[cid] = {r.position: model_key(r.endpoint, r.model) for r in conn.execute(
                select(p).where(p.c.comparison_id == cid))}
    out: list[Outcome] = []
    for r in votes:
        names = panes[r.comparison_id]
        if r.outcome == "win":
            pairs = [(names[r.winner], names[q], 1.0) for q in sorted(names) if q != r.winner]
        else:
            pos = sorted(names)
            pairs = [(names[i], names[j], 0.5) for k, i in enumerate(pos) for j in pos[k + 1:]]
        out.extend(Outcome(a_, b_, s) for a_, b_, s in pairs if a_ != b_)
    return out


def as_dict(comp: Comparison) -> dict[str, Any]:
    """A plain dict of a comparison (for export or a session cache)."""
    return asdict(comp)
