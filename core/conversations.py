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
import secrets
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, select, update

from core import store, writes
from core.conversations_rows import (
    MAX_TEXT_CHARS,
    MESSAGE_STATUSES,
    ROLES,
    ChatMessage,
    Conversation,
    ConversationChanged,
    ConversationNotFound,
    add,
    bump,
    check,
    clip_title,
    descend,
    engine_of,
    fetch,
    from_row,
    insert,
    leaf_of,
    messages_by_id,
    now,
    params_dict,
    path_ids,
    strip_controls,
    touch,
    tree_ids,
)
from core.providers.base import Message, Params

TITLE_WIDTH = 40  # display columns: a CJK character counts two
_C = store.conversations
_M = store.messages
_KEEP: Any = object()  # "leave this setting as it is"


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
    with engine_of(eng).connect() as conn:
        return fetch(conn, user_id, conversation_id)


def load(user_id: str, conversation_id: str, *, last: int | None = 50,
         eng: Engine | None = None) -> Thread:
    """The conversation with the last `last` messages of its active path (None: all).

    Reads the tree's ids and parents (an index, no text), walks the path, then reads the text
    of the messages shown only, so a long conversation costs little more than a short one.
    """
    notes: list[str] = []
    with engine_of(eng).connect() as conn:
        conv = fetch(conn, user_id, conversation_id)
        parents, children = tree_ids(conn, conversation_id)
        leaf = leaf_of(conv.leaf_id, parents, children)
        on_path = path_ids(parents, leaf, notes)
        if last is None:
            shown = on_path
        else:
            shown = on_path[max(0, len(on_path) - last):] if last > 0 else []
        rows = messages_by_id(conn, conversation_id, shown, notes)
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
    with engine_of(eng).connect() as conn:
        fetch(conn, user_id, conversation_id)
        parents, _ = tree_ids(conn, conversation_id)
        if message_id not in parents:
            raise ConversationNotFound(conversation_id)
        on_path = path_ids(parents, message_id)
        rows = messages_by_id(conn, conversation_id, on_path)
    return [rows[i] for i in on_path]


def tree(user_id: str, conversation_id: str, *, eng: Engine | None = None
         ) -> tuple[Conversation, list[ChatMessage], list[int]]:
    """The conversation, every message of its tree (parents before children) and the ids of
    its active path, oldest first: what an export of every branch holds."""
    with engine_of(eng).connect() as conn:
        conv = fetch(conn, user_id, conversation_id)
        parents, children = tree_ids(conn, conversation_id)
        active = path_ids(parents, leaf_of(conv.leaf_id, parents, children))
        ids = sorted(parents)
        rows = messages_by_id(conn, conversation_id, ids)
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
        check(m)
    if not title:
        title = title_from_text(next((m.text for _, _, m in items if m.role == "user"), ""))
    at = now()
    cid = new_id()
    with engine_of(eng).begin() as conn:
        conn.execute(_C.insert().values(
            id=cid, user_id=user_id, title=clip_title(title), created_at=at, updated_at=at,
            endpoint=endpoint, model=model, system_prompt=system,
            params=params_dict(params or Params()), seq=0, leaf_id=None))
        new: dict[Hashable, int] = {}
        depth: dict[Hashable, int] = {}
        for key, parent, m in items:
            depth[key] = 0 if parent is None else depth[parent] + 1
            new[key] = insert(conn, cid, m, new.get(parent), depth[key], at)
        leaf = new[active[-1]] if active else (new[items[-1][0]] if items else None)
        if leaf is not None:
            conn.execute(update(_C).where(_C.c.id == cid).values(leaf_id=leaf))
        return fetch(conn, user_id, cid)


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
    check(message)
    titled: dict[str, Any] = {}
    if message.role == "user":  # a conversation without a title takes its first message's
        titled["title"] = case((_C.c.title == "", title_from_text(message.text)),
                               else_=_C.c.title)
    with engine_of(eng).begin() as conn:
        new_seq = bump(conn, user_id, conversation_id, seq, touch=True, **titled)
        saved = add(conn, conversation_id, message, parent_id)
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
    check(question)
    check(answer)
    titled: dict[str, Any] = {}
    if question.id is None:  # a conversation without a title takes its first message's
        titled["title"] = case((_C.c.title == "", title_from_text(question.text)),
                               else_=_C.c.title)
    with engine_of(eng).begin() as conn:
        new_seq = bump(conn, user_id, conversation_id, seq, touch=True, **titled)
        if question.id is None:
            question = add(conn, conversation_id, question, parent_id)
        else:
            found = conn.execute(select(_M.c.id).where(
                _M.c.id == question.id, _M.c.conversation_id == conversation_id)).first()
            if found is None:
                raise ConversationNotFound(conversation_id)
        saved = add(conn, conversation_id, answer, question.id)
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
    check(message)
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
        touch(conn, user_id, conversation_id)
        conn.execute(update(_M).where(_M.c.id == running).values(
            text=message.text, reasoning=message.reasoning, status=message.status,
            error_kind=message.error_kind, call_id=message.call_id, model=message.model))
        return from_row(conn.execute(select(_M).where(_M.c.id == running)).one())
    bump(conn, user_id, conversation_id, None, touch=True)
    if message.call_id is not None:
        row = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                            _M.c.call_id == message.call_id)).first()
        if row is not None:
            return from_row(row)
    saved = add(conn, conversation_id, replace(message, call_key=key), parent_id)
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
    with engine_of(eng).connect() as conn:
        fetch(conn, user_id, conversation_id)
        found = messages_by_id(conn, conversation_id, [message_id])
    if message_id not in found:
        raise ConversationNotFound(conversation_id)
    return found[message_id]


def switch_branch(user_id: str, conversation_id: str, message_id: int, *, seq: int,
                  eng: Engine | None = None) -> int:
    """Show the branch through `message_id` (a sibling from `Branch.step`); the new `seq`.

    Below that message the path follows the newest answer at each step.
    """
    with engine_of(eng).begin() as conn:
        new_seq = bump(conn, user_id, conversation_id, seq)
        parents, children = tree_ids(conn, conversation_id)
        if message_id not in parents:
            raise ConversationNotFound(conversation_id)
        conn.execute(update(_C).where(_C.c.id == conversation_id)
                     .values(leaf_id=descend(children, message_id)))
    return new_seq


def rename(user_id: str, conversation_id: str, title: str, *, seq: int | None = None,
           eng: Engine | None = None) -> int:
    """Give the conversation a title (checked against `seq` when given); the new `seq`."""
    with engine_of(eng).begin() as conn:
        return bump(conn, user_id, conversation_id, seq, title=clip_title(title))


def retitle(user_id: str, conversation_id: str, title: str, *, was: str,
            eng: Engine | None = None) -> bool:
    """Replace a title the app made (`was`) with a better one, unless it changed meanwhile (a
    rename stands); whether it was replaced. No `seq` bump: a title the app finds is no
    edit a tab must be told about before it sends."""
    with engine_of(eng).begin() as conn:
        result = conn.execute(update(_C).where(
            _C.c.id == conversation_id, _C.c.user_id == user_id, _C.c.title == was
        ).values(title=clip_title(title)))
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
    with engine_of(eng).begin() as conn:
        return bump(conn, user_id, conversation_id, seq, **values)


def delete_conversation(user_id: str, conversation_id: str, *,
                        eng: Engine | None = None) -> None:
    """Delete the conversation and all its messages for good (the call log keeps its rows)."""
    with engine_of(eng).begin() as conn:
        bump(conn, user_id, conversation_id, None)  # locks it and checks the owner
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


def _char_width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


__all__ = [
    "MAX_TEXT_CHARS", "MESSAGE_STATUSES", "ROLES", "Branch", "ChatMessage", "Conversation",
    "ConversationChanged", "ConversationNotFound", "Thread", "add_message", "address", "beat",
    "continue_in_chat", "create", "create_tree", "delete_conversation", "get", "load",
    "message", "new_id", "params_dict", "path", "path_to", "rename", "retitle", "save_reply",
    "start_answer", "strip_controls", "switch_branch", "title_from_text", "tree",
    "update_settings",
]
