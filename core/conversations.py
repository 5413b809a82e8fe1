"""Saved conversations: the message tree and its storage (create, load, branches, write).

Every function takes the user's id and acts on that user's rows only: another user's
conversation id behaves exactly like one that does not exist (`ConversationNotFound`).
Messages are data (`ChatMessage`), rendered at draw time in the reader's language.

Messages form a tree: regenerating an answer or editing a user message adds a sibling. The
conversation's `leaf_id` marks the branch on screen; its path from the root is what is shown
and what is sent. Every write bumps the conversation's `seq`; a write made from an older view
(`seq=` what the tab drew) raises `ConversationChanged` and changes nothing.

All functions open their own connection from the engine, so a worker thread may save a reply
while the page's script has stopped (`save_reply`). The sidebar's list and search live in
`conversations_list`, export and import in `conversations_transfer`, what of a branch fits
a model's window in `conversations_context`.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Text, case, cast, delete, select, update

from core import store, writes
from core.providers.base import Message, Params, param_ok

ROLES = ("user", "assistant")
# running: its request is out (an answer exists from then on, its text refreshed with the
# heartbeat); interrupted: its process died before it ended, the text so far kept.
MESSAGE_STATUSES = ("ok", "stopped", "error", "running", "interrupted")
ENDED = ("ok", "stopped", "error", "interrupted")
TITLE_WIDTH = 40  # display columns: a CJK character counts two
# A message's text or reasoning: more is refused on import and cut short on load.
MAX_TEXT_CHARS = 2_000_000
# C0 controls other than tab and newlines break JSON bodies, logs and PostgreSQL text (NUL).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_C = store.conversations
_M = store.messages
_KEEP: Any = object()  # "leave this setting as it is"


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


@dataclass(frozen=True)
class Branch:
    """Where a message sits among its siblings: `‹ index/count ›`."""

    index: int  # from 1
    ids: tuple[int, ...]  # the siblings, oldest first

    @property
    def count(self) -> int:
        """How many siblings, this one included."""
        return len(self.ids)

    def step(self, delta: int) -> int | None:
        """The id of the sibling `delta` places away, or None past either end."""
        i = self.index - 1 + delta
        return self.ids[i] if 0 <= i < len(self.ids) else None


@dataclass(frozen=True)
class Thread:
    """What the chat page draws: the conversation and the end of its active path."""

    conversation: Conversation
    messages: list[ChatMessage]  # the last messages of the active path, oldest first
    earlier: int  # messages on the path before `messages`, not loaded
    branches: dict[int, Branch]  # for each loaded message
    leaf_id: int | None  # the end of the active path: the parent of the next message sent
    notes: tuple[str, ...] = ()  # stored values left out: the conversation's and its messages'

    @property
    def seq(self) -> int:
        """The sequence number this view was read at; pass it back with a write."""
        return self.conversation.seq

    def branch(self, message_id: int) -> Branch:
        """The siblings of a loaded message."""
        return self.branches[message_id]


# --- reading -------------------------------------------------------------------------------


def get(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> Conversation:
    """One conversation of this user; `ConversationNotFound` otherwise."""
    with _eng(eng).connect() as conn:
        return _get(conn, user_id, conversation_id)


def load(user_id: str, conversation_id: str, *, last: int | None = 50,
         eng: Engine | None = None) -> Thread:
    """The conversation with the last `last` messages of its active path (None: all).

    Reads the tree's ids and parents (an index, no text), walks the path, then reads the text
    of the messages shown only, so a long conversation costs little more than a short one.
    """
    notes: list[str] = []
    with _eng(eng).connect() as conn:
        conv = _get(conn, user_id, conversation_id)
        parents, children = _tree(conn, conversation_id)
        leaf = _leaf(conv.leaf_id, parents, children)
        on_path = _path(parents, leaf, notes)
        if last is None:
            shown = on_path
        else:
            shown = on_path[max(0, len(on_path) - last):] if last > 0 else []
        rows = _messages_by_id(conn, conversation_id, shown, notes)
    branches = {}
    for mid in shown:
        siblings = tuple(children.get(parents.get(mid), [mid]))
        branches[mid] = Branch(siblings.index(mid) + 1, siblings)
    return Thread(conv, [rows[i] for i in shown], len(on_path) - len(shown), branches, leaf,
                  (*conv.notes, *notes))


def path(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> list[ChatMessage]:
    """Every message of the active path, oldest first: what the next request builds on."""
    return load(user_id, conversation_id, last=None, eng=eng).messages


def path_to(user_id: str, conversation_id: str, message_id: int | None, *,
            eng: Engine | None = None) -> list[ChatMessage]:
    """The messages from the root down to `message_id` (None: none), oldest first: what a
    message sent below it builds on, whichever branch is on screen."""
    if message_id is None:
        get(user_id, conversation_id, eng=eng)  # the owner's check all the same
        return []
    with _eng(eng).connect() as conn:
        _get(conn, user_id, conversation_id)
        parents, _ = _tree(conn, conversation_id)
        if message_id not in parents:
            raise ConversationNotFound(conversation_id)
        on_path = _path(parents, message_id)
        rows = _messages_by_id(conn, conversation_id, on_path)
    return [rows[i] for i in on_path]


def tree(user_id: str, conversation_id: str, *, eng: Engine | None = None
         ) -> tuple[Conversation, list[ChatMessage], list[int]]:
    """The conversation, every message of its tree (parents before children) and the ids of
    its active path, oldest first: what an export of every branch holds."""
    with _eng(eng).connect() as conn:
        conv = _get(conn, user_id, conversation_id)
        parents, children = _tree(conn, conversation_id)
        active = _path(parents, _leaf(conv.leaf_id, parents, children))
        ids = sorted(parents)
        rows = _messages_by_id(conn, conversation_id, ids)
    return conv, [rows[i] for i in ids], active


# --- writing -------------------------------------------------------------------------------


def create(user_id: str, *, endpoint: str = "", model: str = "", system: str = "",
           params: Params | None = None, title: str = "",
           messages: Sequence[ChatMessage] = (), eng: Engine | None = None) -> Conversation:
    """A new conversation, optionally starting with a thread (a compare pane continued here).

    `messages` are saved in order, each the child of the one before; the title defaults to
    one made from the first user message.
    """
    items = [(n, n - 1 if n else None, m) for n, m in enumerate(messages)]
    return create_tree(user_id, endpoint=endpoint, model=model, system=system, params=params,
                       title=title, items=items, eng=eng)


def create_tree(user_id: str, *, endpoint: str = "", model: str = "", system: str = "",
                params: Params | None = None, title: str = "",
                items: Sequence[tuple[Hashable, Hashable | None, ChatMessage]] = (),
                active: Sequence[Hashable] = (), eng: Engine | None = None) -> Conversation:
    """A new conversation holding a whole tree of messages (an import), in one transaction.

    `items` are (key, parent key or None, message), every parent before its children; the
    branch on screen ends at `active`'s last key, else at the last message. The title defaults
    to one made from the first user message.
    """
    for _, _, m in items:
        _check(m)
    if not title:
        title = title_from_text(next((m.text for _, _, m in items if m.role == "user"), ""))
    now = _now()
    cid = new_id()
    with _eng(eng).begin() as conn:
        conn.execute(_C.insert().values(
            id=cid, user_id=user_id, title=_clip_title(title), created_at=now, updated_at=now,
            endpoint=endpoint, model=model, system_prompt=system,
            params=params_dict(params or Params()), seq=0, leaf_id=None))
        new: dict[Hashable, int] = {}
        depth: dict[Hashable, int] = {}
        for key, parent, m in items:
            depth[key] = 0 if parent is None else depth[parent] + 1
            new[key] = _insert(conn, cid, m, new.get(parent), depth[key], now)
        leaf = new[active[-1]] if active else (new[items[-1][0]] if items else None)
        if leaf is not None:
            conn.execute(update(_C).where(_C.c.id == cid).values(leaf_id=leaf))
        return _get(conn, user_id, cid)


def address(conversation_id: str) -> str:
    """The chat page's address of a conversation: opening it reopens the conversation."""
    return f"/?c={conversation_id}"


def continue_in_chat(user_id: str, *, endpoint: str, model: str, thread: Sequence[Message],
                     system: str = "", params: Params | None = None,
                     eng: Engine | None = None) -> tuple[str, str]:
    """A new conversation holding a thread from elsewhere (a compare pane), to go on with on
    the chat page; returns its id and its address (`/?c=<id>`).

    `thread` is the pane's messages in order (user and assistant; a system message becomes the
    system prompt when `system` is not given).
    """
    items = []
    for m in thread:
        if m.role == "system":
            system = system or m.content
        elif m.role in ROLES:
            items.append(ChatMessage(m.role, m.content, model=model if m.role == "assistant"
                                     else None))
    conv = create(user_id, endpoint=endpoint, model=model, system=system, params=params,
                  messages=items, eng=eng)
    return conv.id, address(conv.id)


def add_message(user_id: str, conversation_id: str, message: ChatMessage, *,
                parent_id: int | None, seq: int,
                eng: Engine | None = None) -> tuple[ChatMessage, int]:
    """Save a message the user made on screen, as a child of `parent_id` (None: a new root).

    The branch on screen moves to it; an untitled conversation takes a title from the
    first user message. Editing a message is adding one with the edited
    message's parent; regenerating is adding an answer to the same user message. `seq` is the
    one the view was drawn at: if the conversation changed since, `ConversationChanged` and
    nothing is written. Returns the saved message and the new `seq`.
    """
    _check(message)
    titled: dict[str, Any] = {}
    if message.role == "user":  # a conversation without a title takes its first message's
        titled["title"] = case((_C.c.title == "", title_from_text(message.text)),
                               else_=_C.c.title)
    with _eng(eng).begin() as conn:
        new_seq = _bump(conn, user_id, conversation_id, seq, touch=True, **titled)
        saved = _add(conn, conversation_id, message, parent_id)
        conn.execute(update(_C).where(_C.c.id == conversation_id).values(leaf_id=saved.id))
    return saved, new_seq


def start_answer(user_id: str, conversation_id: str, question: ChatMessage,
                 answer: ChatMessage, *, parent_id: int | None, seq: int,
                 eng: Engine | None = None) -> tuple[ChatMessage, ChatMessage, int]:
    """Save an answer as its request goes out (status running), with its question when that
    is new (no id: saved below `parent_id`, as `add_message` does), in one transaction.

    The branch on screen moves to the answer. `seq` is the one the view was drawn at:
    `ConversationChanged` if the conversation changed since, and nothing is written. Returns
    the question, the answer and the new `seq`; `save_reply` completes the answer later.
    """
    _check(question)
    _check(answer)
    titled: dict[str, Any] = {}
    if question.id is None:  # a conversation without a title takes its first message's
        titled["title"] = case((_C.c.title == "", title_from_text(question.text)),
                               else_=_C.c.title)
    with _eng(eng).begin() as conn:
        new_seq = _bump(conn, user_id, conversation_id, seq, touch=True, **titled)
        if question.id is None:
            question = _add(conn, conversation_id, question, parent_id)
        else:
            found = conn.execute(select(_M.c.id).where(
                _M.c.id == question.id, _M.c.conversation_id == conversation_id)).first()
            if found is None:
                raise ConversationNotFound(conversation_id)
        saved = _add(conn, conversation_id, answer, question.id)
        conn.execute(update(_C).where(_C.c.id == conversation_id).values(leaf_id=saved.id))
    return question, saved, new_seq


def save_reply(user_id: str, conversation_id: str, message: ChatMessage, *,
               parent_id: int, key: str | None = None, eng: Engine | None = None) -> ChatMessage:
    """Save an answer from the worker that streamed it, whatever the page is doing: the
    running answer with the call's `key` (`start_answer`) is completed in place, else the
    answer is added below its question.

    No `seq` check: an answer only completes itself or adds a child to its own question, so it
    cannot overwrite anything, and completing one in place is no edit a tab must be told
    about. An added answer moves the branch on screen if it still ends at the question.
    Saving the same call twice returns the first save. `ConversationNotFound` if the
    conversation was deleted meanwhile.

    Written through the write queue (`core.writes`): a locked database is retried, and past
    its retry window `writes.NotSavedYet` is raised while the answer stays queued, to be
    saved once the database lets it. `key` is the call's (`Call.key`): it names the write, and
    links the answer to its call-log row when that row was written after the answer was made.
    """
    _check(message)
    key = key or secrets.token_hex(16)
    return writes.write(
        f"reply:{key}", functools.partial(_save_reply, user_id, conversation_id, message,
                                          parent_id, key),
        eng=eng, what="reply", conversation_id=conversation_id)


def _save_reply(user_id: str, conversation_id: str, message: ChatMessage, parent_id: int,
                key: str, conn: Connection) -> ChatMessage:
    if message.call_id is None:  # its call's row may have been written after it was made
        found = conn.execute(select(store.calls.c.id).where(store.calls.c.call_key == key)
                             ).scalar()
        message = replace(message, call_id=found)
    running = conn.execute(select(_M.c.id).where(_M.c.conversation_id == conversation_id,
                                                 _M.c.call_key == key)).scalar()
    if running is not None:  # the answer written as its request went out: completed in place
        _touch(conn, user_id, conversation_id)
        conn.execute(update(_M).where(_M.c.id == running).values(
            text=message.text, reasoning=message.reasoning, status=message.status,
            error_kind=message.error_kind, call_id=message.call_id, model=message.model))
        return _message(conn.execute(select(_M).where(_M.c.id == running)).one())
    _bump(conn, user_id, conversation_id, None, touch=True)
    if message.call_id is not None:
        row = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                            _M.c.call_id == message.call_id)).first()
        if row is not None:
            return _message(row)
    saved = _add(conn, conversation_id, replace(message, call_key=key), parent_id)
    conn.execute(update(_C).where(_C.c.id == conversation_id, _C.c.leaf_id == parent_id)
                 .values(leaf_id=saved.id))
    return saved


def beat(conversation_id: str, message_id: int, text: str, reasoning: str,
         conn: Connection) -> None:
    """A running answer's text so far, written with its call's heartbeat (in the heartbeat's
    transaction): a reload shows it, and a crash leaves it. An answer that has ended is left
    alone."""
    conn.execute(update(_M).where(_M.c.id == message_id,
                                  _M.c.conversation_id == conversation_id,
                                  _M.c.status == "running")
                 .values(text=text, reasoning=reasoning))


def message(user_id: str, conversation_id: str, message_id: int, *,
            eng: Engine | None = None) -> ChatMessage:
    """One message of this user's conversation (a running answer, polled while it streams);
    `ConversationNotFound` when either is gone."""
    with _eng(eng).connect() as conn:
        _get(conn, user_id, conversation_id)
        found = _messages_by_id(conn, conversation_id, [message_id])
    if message_id not in found:
        raise ConversationNotFound(conversation_id)
    return found[message_id]


def switch_branch(user_id: str, conversation_id: str, message_id: int, *, seq: int,
                  eng: Engine | None = None) -> int:
    """Show the branch through `message_id` (a sibling from `Branch.step`); the new `seq`.

    Below that message the path follows the newest answer at each step.
    """
    with _eng(eng).begin() as conn:
        new_seq = _bump(conn, user_id, conversation_id, seq)
        parents, children = _tree(conn, conversation_id)
        if message_id not in parents:
            raise ConversationNotFound(conversation_id)
        conn.execute(update(_C).where(_C.c.id == conversation_id)
                     .values(leaf_id=_descend(children, message_id)))
    return new_seq


def rename(user_id: str, conversation_id: str, title: str, *, seq: int | None = None,
           eng: Engine | None = None) -> int:
    """Give the conversation a title (checked against `seq` when given); the new `seq`."""
    with _eng(eng).begin() as conn:
        return _bump(conn, user_id, conversation_id, seq, title=_clip_title(title))


def retitle(user_id: str, conversation_id: str, title: str, *, was: str,
            eng: Engine | None = None) -> bool:
    """Replace a title the app made (`was`) with a better one, unless it changed meanwhile (a
    rename stands); whether it was replaced. No `seq` bump: a title the app finds is no
    edit a tab must be told about before it sends."""
    with _eng(eng).begin() as conn:
        result = conn.execute(update(_C).where(
            _C.c.id == conversation_id, _C.c.user_id == user_id, _C.c.title == was
        ).values(title=_clip_title(title)))
    return result.rowcount == 1


def update_settings(user_id: str, conversation_id: str, *, seq: int | None = None,
                    endpoint: str = _KEEP, model: str = _KEEP, system: str = _KEEP,
                    params: Params = _KEEP, eng: Engine | None = None) -> int:
    """Remember the endpoint, model, system prompt or parameters given; the new `seq`."""
    values: dict[str, Any] = {}
    if endpoint is not _KEEP:
        values["endpoint"] = endpoint
    if model is not _KEEP:
        values["model"] = model
    if system is not _KEEP:
        values["system_prompt"] = system
    if params is not _KEEP:
        values["params"] = params_dict(params)
    with _eng(eng).begin() as conn:
        return _bump(conn, user_id, conversation_id, seq, **values)


def delete_conversation(user_id: str, conversation_id: str, *,
                        eng: Engine | None = None) -> None:
    """Delete the conversation and all its messages for good (the call log keeps its rows)."""
    with _eng(eng).begin() as conn:
        _bump(conn, user_id, conversation_id, None)  # locks it and checks the owner
        conn.execute(delete(_M).where(_M.c.conversation_id == conversation_id))
        conn.execute(delete(_C).where(_C.c.id == conversation_id))


def new_id() -> str:
    """A random, URL-safe conversation id: not guessable, so an address reveals nothing."""
    return secrets.token_urlsafe(12)


# --- titles --------------------------------------------------------------------------------


def title_from_text(text: str, width: int = TITLE_WIDTH) -> str:
    """A title from a message: its first non-empty line, spaces collapsed, cut to `width`
    display columns (CJK characters count two) at a word end where there is one, with "…"."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split()).lstrip("#> ").strip()
    if _width(line) <= width:
        return line
    cut, used = 0, 0
    for i, ch in enumerate(line):
        used += _char_width(ch)
        if used > width - 1:  # one column for the ellipsis
            break
        cut = i + 1
    head = line[:cut]
    space = head.rfind(" ")
    if space > cut // 2:  # a word end not too far back
        head = head[:space]
    return head.rstrip(" ,.;:，。；：、") + "…"


# --- inside --------------------------------------------------------------------------------

def _eng(eng: Engine | None) -> Engine:
    return eng or store.engine()


def _now() -> datetime:
    return datetime.now(UTC)


# The stored parameters as text, parsed here: a value the JSON type could not read (or one
# nested too deeply to) is left out with a note instead of failing the whole read.
_CONV_COLS = (*(c for c in _C.c if c.name != "params"), cast(_C.c.params, Text).label("params"))


def _get(conn: Connection, user_id: str, conversation_id: str) -> Conversation:
    row = conn.execute(select(*_CONV_COLS).where(_C.c.id == conversation_id,
                                                 _C.c.user_id == user_id)).first()
    if row is None:
        raise ConversationNotFound(conversation_id)
    notes: list[str] = []
    return Conversation(
        id=row.id, user_id=row.user_id, title=row.title, created_at=store.as_utc(row.created_at),
        updated_at=store.as_utc(row.updated_at), endpoint=row.endpoint, model=row.model,
        system=row.system_prompt.replace("\x00", ""), params=_stored_params(row.params, notes),
        seq=row.seq, leaf_id=row.leaf_id, notes=tuple(notes))


def _message(row: Any, notes: list[str] | None = None) -> ChatMessage:
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


def _bump(conn: Connection, user_id: str, conversation_id: str, seq: int | None, *,
          touch: bool = False, **values: Any) -> int:
    """The one write every change starts with: seq + 1, if the conversation is this user's
    and (when `seq` is given) still at `seq`. Being a write, it also takes the database's
    write lock first, so the rest of the transaction cannot interleave with another writer."""
    where = [_C.c.id == conversation_id, _C.c.user_id == user_id]
    if seq is not None:
        where.append(_C.c.seq == seq)
    if touch:
        values["updated_at"] = _now()
    row = conn.execute(update(_C).where(*where).values(seq=_C.c.seq + 1, **values)
                       .returning(_C.c.seq)).first()
    if row is not None:
        return row[0]
    current = conn.execute(select(_C.c.seq).where(_C.c.id == conversation_id,
                                                  _C.c.user_id == user_id)).first()
    if current is None:
        raise ConversationNotFound(conversation_id)
    raise ConversationChanged(conversation_id, current[0])


def _touch(conn: Connection, user_id: str, conversation_id: str) -> None:
    """The conversation was written to (it moves up the list), with no `seq` bump: nothing a
    tab drew changed shape."""
    found = conn.execute(update(_C).where(_C.c.id == conversation_id, _C.c.user_id == user_id)
                         .values(updated_at=_now())).rowcount
    if not found:
        raise ConversationNotFound(conversation_id)


def _add(conn: Connection, conversation_id: str, message: ChatMessage,
         parent_id: int | None) -> ChatMessage:
    position = 0
    if parent_id is not None:
        row = conn.execute(select(_M.c.position).where(
            _M.c.id == parent_id, _M.c.conversation_id == conversation_id)).first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        position = row[0] + 1
    now = _now()
    mid = _insert(conn, conversation_id, message, parent_id, position, now)
    return ChatMessage(
        role=message.role, text=message.text, reasoning=message.reasoning,
        status=message.status, error_kind=message.error_kind, call_id=message.call_id,
        model=message.model, call_key=message.call_key, id=mid, parent_id=parent_id,
        position=position, created_at=now)


def _insert(conn: Connection, conversation_id: str, m: ChatMessage, parent_id: int | None,
            position: int, now: datetime) -> int:
    result = conn.execute(_M.insert().values(
        conversation_id=conversation_id, parent_id=parent_id, role=m.role, text=m.text,
        reasoning=m.reasoning, status=m.status, error_kind=m.error_kind, call_id=m.call_id,
        model=m.model, call_key=m.call_key, created_at=now, position=position))
    return result.inserted_primary_key[0]


def _check(m: ChatMessage) -> None:
    if m.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {m.role!r}")
    if m.status not in MESSAGE_STATUSES:
        raise ValueError(f"status must be one of {MESSAGE_STATUSES}, not {m.status!r}")


def _tree(conn: Connection, conversation_id: str
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


def _leaf(leaf_id: int | None, parents: dict[int, int | None],
          children: dict[int | None, list[int]]) -> int | None:
    if leaf_id in parents:
        return leaf_id
    return _descend(children, None) if children else None


def _descend(children: dict[int | None, list[int]], start: int | None) -> int | None:
    """From `start` down the newest child at each step, to a leaf."""
    node = start
    while children.get(node):
        node = children[node][-1]
    return node


def _path(parents: dict[int, int | None], leaf: int | None,
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


def _messages_by_id(conn: Connection, conversation_id: str, ids: Sequence[int],
                    notes: list[str] | None = None) -> dict[int, ChatMessage]:
    found: dict[int, ChatMessage] = {}
    for i in range(0, len(ids), 500):  # a bounded IN list for every database
        chunk = ids[i:i + 500]
        rows = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                             _M.c.id.in_(chunk)))
        found.update((r.id, _message(r, notes)) for r in rows)
    return found


def _stored_params(raw: str | None, notes: list[str]) -> Params:
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


def _clip_title(title: str) -> str:
    return " ".join(title.split())[:200]


def _char_width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


__all__ = [
    "Branch", "ChatMessage", "Conversation", "ConversationChanged", "ConversationNotFound",
    "Thread", "add_message", "address", "beat", "continue_in_chat", "create", "create_tree",
    "delete_conversation", "get", "load", "message", "new_id", "params_dict", "path",
    "path_to", "rename", "retitle", "save_reply", "start_answer", "strip_controls",
    "switch_branch", "title_from_text", "tree", "update_settings",
]
