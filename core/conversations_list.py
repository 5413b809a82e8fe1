"""Finding saved conversations: the sidebar's list by day, search, and what one has cost.

Read-only, and like the store every function acts on the given user's rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, exists, func, or_, select

from core import store
from core.conversations import title_from_text
from core.conversations_rows import engine_of

_C = store.conversations
_M = store.messages


@dataclass(frozen=True)
class Summary:
    """A conversation as the sidebar lists it."""

    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    endpoint: str
    model: str


@dataclass(frozen=True)
class Hit:
    """A search result: the conversation and, when the text matched, where."""

    conversation: Summary
    snippet: str  # around the first match in a message, or "" when the title matched
    message_id: int | None


@dataclass(frozen=True)
class Spent:
    """What the calls of one conversation used, from the call log."""

    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None  # None when no call had a known price
    cost_complete: bool  # False when some call's price is unknown


def list_conversations(user_id: str, *, limit: int = 50, offset: int = 0,
                       eng: Engine | None = None) -> list[Summary]:
    """This user's conversations, the most recently written first."""
    query = (select(*_SUMMARY_COLS).where(_C.c.user_id == user_id)
             .order_by(_C.c.updated_at.desc(), _C.c.id).limit(limit).offset(offset))
    with engine_of(eng).connect() as conn:
        return [_summary(r) for r in conn.execute(query)]


def count_conversations(user_id: str, *, eng: Engine | None = None) -> int:
    """How many conversations this user has."""
    with engine_of(eng).connect() as conn:
        return conn.execute(
            select(func.count()).select_from(_C).where(_C.c.user_id == user_id)
        ).scalar_one()


def group_by_day(items: Sequence[Summary], tz: str | tzinfo) -> list[tuple[date, list[Summary]]]:
    """Conversations grouped by the local day of their last write, in the order given."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    groups: list[tuple[date, list[Summary]]] = []
    for item in items:
        day = item.updated_at.astimezone(zone).date()
        if not groups or groups[-1][0] != day:
            groups.append((day, []))
        groups[-1][1].append(item)
    return groups


def search(user_id: str, text: str, *, limit: int = 20, offset: int = 0,
           eng: Engine | None = None) -> list[Hit]:
    """Conversations whose title or any message contains `text`, newest first.

    A plain substring, case-insensitive where the database folds case, so Chinese (which has
    no spaces between words) matches inside a sentence; % and _ match only themselves.
    """
    text = text.strip()
    if not text:
        return []
    in_message = exists().where(_M.c.conversation_id == _C.c.id,
                                _M.c.text.icontains(text, autoescape=True))
    query = (select(*_SUMMARY_COLS)
             .where(_C.c.user_id == user_id,
                    or_(_C.c.title.icontains(text, autoescape=True), in_message))
             .order_by(_C.c.updated_at.desc(), _C.c.id).limit(limit).offset(offset))
    with engine_of(eng).connect() as conn:
        found = [_summary(r) for r in conn.execute(query)]
        hits = []
        for conv in found:
            if text.casefold() in conv.title.casefold():
                hits.append(Hit(conv, "", None))
                continue
            row = conn.execute(
                select(_M.c.id, _M.c.text)
                .where(_M.c.conversation_id == conv.id,
                       _M.c.text.icontains(text, autoescape=True))
                .order_by(_M.c.id).limit(1)
            ).first()
            if row is None:  # the title matched where the database folds case
                hits.append(Hit(conv, "", None))
            else:
                hits.append(Hit(conv, _snippet(row.text, text), row.id))
    return hits


def spent(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> Spent:
    """Tokens and cost of every call made for this conversation (its running total)."""
    calls = store.calls
    query = select(func.count(), func.coalesce(func.sum(calls.c.input_tokens), 0),
                   func.coalesce(func.sum(calls.c.output_tokens), 0),
                   func.sum(calls.c.cost_usd), func.count(calls.c.cost_usd)).where(
        calls.c.user_id == user_id, calls.c.conversation_id == conversation_id)
    with engine_of(eng).connect() as conn:
        n, tokens_in, tokens_out, cost, priced = conn.execute(query).one()
    cost = None if cost is None else Decimal(str(cost))
    return Spent(n, int(tokens_in), int(tokens_out), cost, priced == n)


_SUMMARY_COLS = (_C.c.id, _C.c.title, _C.c.created_at, _C.c.updated_at, _C.c.endpoint,
                 _C.c.model)
_SNIPPET = 60  # characters either side of a match


def _summary(row: Any) -> Summary:
    return Summary(row.id, row.title, store.as_utc(row.created_at),
                   store.as_utc(row.updated_at), row.endpoint, row.model)


def _snippet(text: str, needle: str) -> str:
    at = text.casefold().find(needle.casefold())
    if at < 0:
        return title_from_text(text, 2 * _SNIPPET)
    start, end = max(0, at - _SNIPPET), min(len(text), at + len(needle) + _SNIPPET)
    body = " ".join(text[start:end].split())
    return ("…" if start else "") + body + ("…" if end < len(text) else "")
