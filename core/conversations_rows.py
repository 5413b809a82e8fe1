"""A conversation's rows: how they are read and written, for `conversations` and its siblings.

The building blocks every read and write of the message tree is made of, in the caller's
transaction: the conversation and message as data (`Conversation`, `ChatMessage`), the seq
compare-and-set every change starts with (`bump`), the tree walk (ids and parents only), and
the checks that keep a stored value the app cannot use (a temperature of 5, a loop in the
tree, a NUL byte) from failing a read: it is mended and noted instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast, select, update

from core import store
from core.providers.base import Params, param_ok

ROLES = ("user", "assistant")
# running: its request is out (an answer exists from then on, its text refreshed with the
# heartbeat); interrupted: its process died before it ended, the text so far kept.
MESSAGE_STATUSES = ("ok", "stopped", "error", "running", "interrupted")
# A message's text or reasoning: more is refused on import and cut short on load.
MAX_TEXT_CHARS = 2_000_000
# C0 controls other than tab and newlines break JSON bodies, logs and PostgreSQL text (NUL).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_C = store.conversations
_M = store.messages


class ConversationNotFound(LookupError):
    """No such conversation for this user (also when it belongs to someone else)."""

    key = "convo.not_found"

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"conversation {conversation_id!r} not found")


class ConversationChanged(Exception):
    """The conversation was written elsewhere (another tab) since this view was drawn."""

    key = "convo.changed"

    def __init__(self, conversation_id: str, seq: int) -> None:
        self.conversation_id = conversation_id
        self.seq = seq  # the conversation's sequence number now
        super().__init__(f"conversation {conversation_id!r} changed elsewhere (now at {seq})")


@dataclass(frozen=True)
class ChatMessage:
    """One saved message: what was said and how it ended, never pre-rendered text.

    A new message has no `id`; the saved one returned by the store has it.
    """

    role: str  # user or assistant
    text: str
    reasoning: str = ""  # shown to the user, never sent back to the model
    status: str = "ok"  # one of MESSAGE_STATUSES
    error_kind: str | None = None  # an ErrorKind value when status is error
    call_id: int | None = None  # the call-log row this answer came from
    model: str | None = None
    call_key: str | None = None  # the answer's call (`Call.key`), also before its row exists
    id: int | None = None
    parent_id: int | None = None
    position: int = 0  # depth in the tree: 0 for the first message
    created_at: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    """A saved chat and the settings it remembers."""

    id: str
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    endpoint: str
    model: str
    system: str
    params: Params
    seq: int
    leaf_id: int | None
    # Stored values that could not be used and were left out ("temperature=5"), to tell the
    # user: a bad value never stops the conversation from opening.
    notes: tuple[str, ...] = ()


def engine_of(eng: Engine | None) -> Engine:
    """The engine given, else the app's."""
    return eng or store.engine()


def now() -> datetime:
    """The time a row is written at, in UTC."""
    return datetime.now(UTC)


# The stored parameters as text, parsed here: a value the JSON type could not read (or one
# nested too deeply to) is left out with a note instead of failing the whole read.
_CONV_COLS = (*(c for c in _C.c if c.name != "params"), cast(_C.c.params, Text).label("params"))


def fetch(conn: Connection, user_id: str, conversation_id: str) -> Conversation:
    """The user's conversation, its stored settings checked (`Conversation.notes`);
    `ConversationNotFound` when it is not there or not theirs."""
    row = conn.execute(select(*_CONV_COLS).where(_C.c.id == conversation_id,
                                                 _C.c.user_id == user_id)).first()
    if row is None:
        raise ConversationNotFound(conversation_id)
    notes: list[str] = []
    return Conversation(
        id=row.id, user_id=row.user_id, title=row.title, created_at=store.as_utc(row.created_at),
        updated_at=store.as_utc(row.updated_at), endpoint=row.endpoint, model=row.model,
        system=row.system_prompt.replace("\x00", ""), params=stored_params(row.params, notes),
        seq=row.seq, leaf_id=row.leaf_id, notes=tuple(notes))


def from_row(row: Any, notes: list[str] | None = None) -> ChatMessage:
    """A stored message as the app can use it: a role or status it does not know, or a text
    beyond MAX_TEXT_CHARS, is mended and noted (on `notes`) rather than failing the read."""
    notes = [] if notes is None else notes
    role, status = row.role, row.status
    if role not in ROLES:
        notes.append(f"message {row.id}: role={role!r}")
        role = "assistant"
    if status not in MESSAGE_STATUSES:
        notes.append(f"message {row.id}: status={status!r}")
        status = "error"
    text, reasoning = row.text or "", row.reasoning or ""
    for name, value in (("text", text), ("reasoning", reasoning)):
        if len(value) > MAX_TEXT_CHARS:
            notes.append(f"message {row.id}: {name} of {len(value):,} characters, cut short")
    return ChatMessage(
        role=role, text=text[:MAX_TEXT_CHARS].replace("\x00", ""),
        reasoning=reasoning[:MAX_TEXT_CHARS].replace("\x00", ""), status=status,
        error_kind=row.error_kind, call_id=row.call_id, model=row.model,
        call_key=row.call_key, id=row.id, parent_id=row.parent_id, position=row.position,
        created_at=store.as_utc(row.created_at))


def bump(conn: Connection, user_id: str, conversation_id: str, seq: int | None, *,
          touch: bool = False, **values: Any) -> int:
    """The one write every change starts with: seq + 1, if the conversation is this user's
    and (when `seq` is given) still at `seq`. Being a write, it also takes the database's
    write lock first, so the rest of the transaction cannot interleave with another writer."""
    where = [_C.c.id == conversation_id, _C.c.user_id == user_id]
    if seq is not None:
        where.append(_C.c.seq == seq)
    if touch:
        values["updated_at"] = now()
    row = conn.execute(update(_C).where(*where).values(seq=_C.c.seq + 1, **values)
                       .returning(_C.c.seq)).first()
    if row is not None:
        return row[0]
    current = conn.execute(select(_C.c.seq).where(_C.c.id == conversation_id,
                                                  _C.c.user_id == user_id)).first()
    if current is None:
        raise ConversationNotFound(conversation_id)
    raise ConversationChanged(conversation_id, current[0])


def touch(conn: Connection, user_id: str, conversation_id: str) -> None:
    """The conversation was written to (it moves up the list), with no `seq` bump: nothing a
    tab drew changed shape."""
    found = conn.execute(update(_C).where(_C.c.id == conversation_id, _C.c.user_id == user_id)
                         .values(updated_at=now())).rowcount
    if not found:
        raise ConversationNotFound(conversation_id)


def add(conn: Connection, conversation_id: str, message: ChatMessage,
         parent_id: int | None) -> ChatMessage:
    """Insert a message below `parent_id` (None: a root), one deeper than its parent; the
    message as saved."""
    position = 0
    if parent_id is not None:
        row = conn.execute(select(_M.c.position).where(
            _M.c.id == parent_id, _M.c.conversation_id == conversation_id)).first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        position = row[0] + 1
    at = now()
    mid = insert(conn, conversation_id, message, parent_id, position, at)
    return ChatMessage(
        role=message.role, text=message.text, reasoning=message.reasoning,
        status=message.status, error_kind=message.error_kind, call_id=message.call_id,
        model=message.model, call_key=message.call_key, id=mid, parent_id=parent_id,
        position=position, created_at=at)


def insert(conn: Connection, conversation_id: str, m: ChatMessage, parent_id: int | None,
            position: int, at: datetime) -> int:
    """Insert one message row as given; its id."""
    result = conn.execute(_M.insert().values(
        conversation_id=conversation_id, parent_id=parent_id, role=m.role, text=m.text,
        reasoning=m.reasoning, status=m.status, error_kind=m.error_kind, call_id=m.call_id,
        model=m.model, call_key=m.call_key, created_at=at, position=position))
    return result.inserted_primary_key[0]


def check(m: ChatMessage) -> None:
    """A message the app is about to write: a role or status it does not know is a bug."""
    if m.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {m.role!r}")
    if m.status not in MESSAGE_STATUSES:
        raise ValueError(f"status must be one of {MESSAGE_STATUSES}, not {m.status!r}")


def tree_ids(conn: Connection, conversation_id: str
          ) -> tuple[dict[int, int | None], dict[int | None, list[int]]]:
    """Each message's parent, and each message's children (None: the roots), oldest first."""
    parents: dict[int, int | None] = {}
    children: dict[int | None, list[int]] = {}
    rows = conn.execute(select(_M.c.id, _M.c.parent_id)
                        .where(_M.c.conversation_id == conversation_id).order_by(_M.c.id))
    for mid, parent in rows:
        parents[mid] = parent
        children.setdefault(parent, []).append(mid)
    return parents, children


def leaf_of(leaf_id: int | None, parents: dict[int, int | None],
          children: dict[int | None, list[int]]) -> int | None:
    """The end of the branch on screen: the stored leaf while it exists, else the newest
    path from the first root."""
    if leaf_id in parents:
        return leaf_id
    return descend(children, None) if children else None


def descend(children: dict[int | None, list[int]], start: int | None) -> int | None:
    """From `start` down the newest child at each step, to a leaf."""
    node = start
    while children.get(node):
        node = children[node][-1]
    return node


def path_ids(parents: dict[int, int | None], leaf: int | None,
          notes: list[str] | None = None) -> list[int]:
    """From the root down to `leaf`. A stored tree that loops, or points at a parent outside
    the conversation, is cut where it does (and noted) rather than walked forever."""
    out: list[int] = []
    seen: set[int] = set()
    node = leaf
    while node is not None:
        if node in seen or node not in parents:
            if notes is not None:
                notes.append(f"message {node}: a broken link in the tree")
            break
        seen.add(node)
        out.append(node)
        node = parents[node]
    out.reverse()
    return out


def messages_by_id(conn: Connection, conversation_id: str, ids: Sequence[int],
                    notes: list[str] | None = None) -> dict[int, ChatMessage]:
    """The messages with these ids (their text read only here), mended and noted as
    `from_row` does."""
    found: dict[int, ChatMessage] = {}
    for i in range(0, len(ids), 500):  # a bounded IN list for every database
        chunk = ids[i:i + 500]
        rows = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                             _M.c.id.in_(chunk)))
        found.update((r.id, from_row(r, notes)) for r in rows)
    return found


def stored_params(raw: str | None, notes: list[str]) -> Params:
    """Params from their stored JSON text: what cannot be read, is of the wrong kind or out of
    range (a temperature of 5) is left out and noted; names the app does not know are
    ignored."""
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        notes.append("params: not readable")
        return Params()
    if value is None:
        return Params()
    if not isinstance(value, dict):
        notes.append("params: not a set of parameters")
        return Params()
    known = {f.name for f in fields(Params)}
    kept = {}
    for name, v in value.items():
        if name not in known:
            continue
        if param_ok(name, v):
            kept[name] = v
        else:
            notes.append(f"{name}={str(v)[:40]}")
    return Params(**kept)


def strip_controls(text: str) -> str:
    """Text without the control characters (NUL and the like; tab and newlines stay) that
    break JSON bodies, logs and PostgreSQL."""
    return _CONTROL.sub("", text)


def params_dict(params: Params) -> dict[str, Any]:
    """The parameters that are set, as plain data (stored, exported)."""
    return {f.name: getattr(params, f.name) for f in fields(Params)
            if getattr(params, f.name) is not None}


def clip_title(title: str) -> str:
    """A title as stored: one line, spaces collapsed, at most 200 characters."""
    return " ".join(title.split())[:200]
