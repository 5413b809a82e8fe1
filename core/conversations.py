"""Saved conversations: create, list, search, branches, the context that fits, export, import.

Every function takes the user's id and acts on that user's rows only: another user's
conversation id behaves exactly like one that does not exist (`ConversationNotFound`).
Messages are data (`ChatMessage`), rendered at draw time in the reader's language.

Messages form a tree: regenerating an answer or editing a user message adds a sibling. The
conversation's `leaf_id` marks the branch on screen; its path from the root is what is shown
and what is sent. Every write bumps the conversation's `seq`; a write made from an older view
(`seq=` what the tab drew) raises `ConversationChanged` and changes nothing.

All functions open their own connection from the engine, so a worker thread may save a reply
while the page's script has stopped (`save_reply`).
"""

from __future__ import annotations

import functools
import json
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, case, delete, exists, func, or_, select, update

from core import store, writes
from core.i18n import t

# The token estimator comes in on this line: swap it for core.tokens when that lands.
from core.providers.base import Message, Params
from core.tokens import estimate_tokens

ROLES = ("user", "assistant")
MESSAGE_STATUSES = ("ok", "stopped", "error")
MAX_IMPORT_BYTES = 50 * 1024 * 1024  # refused before parsing
TITLE_WIDTH = 40  # display columns: a CJK character counts two
FORMAT = "owngpt.conversation"
FORMAT_VERSION = 1
PER_MESSAGE_TOKENS = 4  # role and framing a chat template adds around each message

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


class ImportRefused(ValueError):
    """An import file that cannot become a conversation; `key` and `context` say why."""

    def __init__(self, key: str, **context: Any) -> None:
        self.key = key
        self.context = context
        detail = ", ".join(f"{k}={v}" for k, v in context.items())
        super().__init__(f"{key}: {detail}" if detail else key)


@dataclass(frozen=True)
class ChatMessage:
    """One saved message: what was said and how it ended, never pre-rendered text.

    A new message has no `id`; the saved one returned by the store has it.
    """

    role: str  # user or assistant
    text: str
    reasoning: str = ""  # shown to the user, never sent back to the model
    status: str = "ok"  # ok, stopped or error
    error_kind: str | None = None  # an ErrorKind value when status is error
    call_id: int | None = None  # the call-log row this answer came from
    model: str | None = None
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

    @property
    def seq(self) -> int:
        """The sequence number this view was read at; pass it back with a write."""
        return self.conversation.seq

    def branch(self, message_id: int) -> Branch:
        """The siblings of a loaded message."""
        return self.branches[message_id]


@dataclass(frozen=True)
class Hit:
    """A search result: the conversation and, when the text matched, where."""

    conversation: Summary
    snippet: str  # around the first match in a message, or "" when the title matched
    message_id: int | None


@dataclass(frozen=True)
class Fit:
    """The request that fits the model's window, and what had to be left out."""

    messages: list[Message]  # system prompt first (when set), then the kept turns
    left_out: list[ChatMessage]  # oldest turns that did not fit, oldest first
    tokens: int  # estimated prompt tokens of `messages`
    budget: int  # window minus the room kept for the answer

    @property
    def fits(self) -> bool:
        """False when even the system prompt and the last turn exceed the budget."""
        return self.tokens <= self.budget


@dataclass(frozen=True)
class Spent:
    """What the calls of one conversation used, from the call log."""

    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None  # None when no call had a known price
    cost_complete: bool  # False when some call's price is unknown


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
    with _eng(eng).connect() as conn:
        conv = _get(conn, user_id, conversation_id)
        parents, children = _tree(conn, conversation_id)
        leaf = _leaf(conv.leaf_id, parents, children)
        on_path = _path(parents, leaf)
        if last is None:
            shown = on_path
        else:
            shown = on_path[max(0, len(on_path) - last):] if last > 0 else []
        rows = _messages_by_id(conn, conversation_id, shown)
    branches = {}
    for mid in shown:
        siblings = tuple(children[parents[mid]])
        branches[mid] = Branch(siblings.index(mid) + 1, siblings)
    return Thread(conv, [rows[i] for i in shown], len(on_path) - len(shown), branches, leaf)


def path(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> list[ChatMessage]:
    """Every message of the active path, oldest first: what the next request builds on."""
    return load(user_id, conversation_id, last=None, eng=eng).messages


def list_conversations(user_id: str, *, limit: int = 50, offset: int = 0,
                       eng: Engine | None = None) -> list[Summary]:
    """This user's conversations, the most recently written first."""
    query = (select(*_SUMMARY_COLS).where(_C.c.user_id == user_id)
             .order_by(_C.c.updated_at.desc(), _C.c.id).limit(limit).offset(offset))
    with _eng(eng).connect() as conn:
        return [_summary(r) for r in conn.execute(query)]


def count_conversations(user_id: str, *, eng: Engine | None = None) -> int:
    """How many conversations this user has."""
    with _eng(eng).connect() as conn:
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
    with _eng(eng).connect() as conn:
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
    with _eng(eng).connect() as conn:
        n, tokens_in, tokens_out, cost, priced = conn.execute(query).one()
    cost = None if cost is None else Decimal(str(cost))
    return Spent(n, int(tokens_in), int(tokens_out), cost, priced == n)


# --- writing -------------------------------------------------------------------------------


def create(user_id: str, *, endpoint: str = "", model: str = "", system: str = "",
           params: Params | None = None, title: str = "",
           messages: Sequence[ChatMessage] = (), eng: Engine | None = None) -> Conversation:
    """A new conversation, optionally starting with a thread (a compare pane continued here).

    `messages` are saved in order, each the child of the one before; the title defaults to
    one made from the first user message.
    """
    for m in messages:
        _check(m)
    if not title:
        first = next((m.text for m in messages if m.role == "user"), "")
        title = title_from_text(first)
    now = _now()
    cid = new_id()
    with _eng(eng).begin() as conn:
        conn.execute(_C.insert().values(
            id=cid, user_id=user_id, title=_clip_title(title), created_at=now, updated_at=now,
            endpoint=endpoint, model=model, system_prompt=system,
            params=_params_json(params or Params()), seq=0, leaf_id=None))
        parent: int | None = None
        for position, m in enumerate(messages):
            parent = _insert(conn, cid, m, parent, position, now)
        if parent is not None:
            conn.execute(update(_C).where(_C.c.id == cid).values(leaf_id=parent))
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


def save_reply(user_id: str, conversation_id: str, message: ChatMessage, *,
               parent_id: int, key: str | None = None, eng: Engine | None = None) -> ChatMessage:
    """Save an answer from the worker that streamed it, whatever the page is doing.

    No `seq` check: an answer only adds a child to its own question, so it cannot overwrite
    anything. The branch on screen moves to it if it still ends at the question. Saving the
    same call twice returns the first save. `ConversationNotFound` if it was deleted meanwhile.

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
    _bump(conn, user_id, conversation_id, None, touch=True)
    if message.call_id is None:  # its call's row may have been written after it was made
        found = conn.execute(select(store.calls.c.id).where(store.calls.c.call_key == key)
                             ).scalar()
        message = replace(message, call_id=found)
    if message.call_id is not None:
        row = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                            _M.c.call_id == message.call_id)).first()
        if row is not None:
            return _message(row)
    saved = _add(conn, conversation_id, message, parent_id)
    conn.execute(update(_C).where(_C.c.id == conversation_id, _C.c.leaf_id == parent_id)
                 .values(leaf_id=saved.id))
    return saved


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
        values["params"] = _params_json(params)
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


TITLE_PROMPT = (
    "Write a title of at most six words (or twelve Chinese characters) for a conversation "
    "that starts with the message below, in the message's language. Answer with the title "
    "only, no quotes, no final punctuation.\n\nMessage:\n{text}"
)


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


def title_with_model(first_message: str, ask: Callable[[list[Message]], str],
                     width: int = TITLE_WIDTH) -> str:
    """A title asked of a model through `ask` (the caller meters it, source "title"), or the
    one made from the text when the model fails or answers nothing usable."""
    fallback = title_from_text(first_message, width)
    try:
        answer = ask([Message("user", TITLE_PROMPT.format(text=first_message[:2000]))])
    except Exception:  # noqa: BLE001 - a title is a nicety; the message's own words will do
        return fallback
    line = next((ln for ln in (answer or "").splitlines() if ln.strip()), "")
    line = line.strip(" \"'“”‘’「」『』《》*#").rstrip("。.!！")
    line = line.strip(" \"'“”‘’「」『』《》*#")
    return title_from_text(line, width) if line else fallback


# --- the context that fits -----------------------------------------------------------------


def to_send(messages: Sequence[ChatMessage]) -> list[Message]:
    """The messages as the model gets them: text only (never reasoning), nothing empty."""
    return [Message(m.role, m.text) for m in messages if m.text.strip()]


def fit_context(system: str, path_messages: Sequence[ChatMessage], window_tokens: int,
                reserve_output: int, *,
                estimate: Callable[[str], int] = estimate_tokens) -> Fit:
    """The system prompt and as many of the newest turns as fit `window_tokens` less
    `reserve_output`, trimmed oldest turn first (a turn: a user message and what follows).

    The system prompt and the last turn are always kept, even when they alone do not fit
    (then `Fit.fits` is False and the server will say so). Estimates from the newest turn
    backwards and stops at the first that does not fit, so a long history costs little.
    """
    budget = window_tokens - reserve_output
    sendable = [m for m in path_messages if m.text.strip()]
    starts = [i for i, m in enumerate(sendable) if m.role == "user" or i == 0]
    used = estimate(system) + PER_MESSAGE_TOKENS if system else 0
    keep_from = len(sendable)
    for start in reversed(starts):
        cost = sum(estimate(m.text) + PER_MESSAGE_TOKENS for m in sendable[start:keep_from])
        if keep_from < len(sendable) and used + cost > budget:
            break
        used += cost
        keep_from = start
    head = [Message("system", system)] if system else []
    kept = sendable[keep_from:]
    return Fit(head + to_send(kept), sendable[:keep_from], used, budget)


# --- export and import ---------------------------------------------------------------------


def export_dict(user_id: str, conversation_id: str, *, all_branches: bool = False,
                eng: Engine | None = None) -> dict[str, Any]:
    """The conversation as plain data: settings (endpoint name, model, parameters; never a
    key or an address), the active path, and every branch when asked."""
    with _eng(eng).connect() as conn:
        conv = _get(conn, user_id, conversation_id)
        parents, children = _tree(conn, conversation_id)
        active = _path(parents, _leaf(conv.leaf_id, parents, children))
        ids = sorted(parents) if all_branches else active
        rows = _messages_by_id(conn, conversation_id, ids)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "title": conv.title,
        "created_at": conv.created_at.isoformat(),
        "updated_at": conv.updated_at.isoformat(),
        "endpoint": conv.endpoint,
        "model": conv.model,
        "system": conv.system,
        "params": _params_json(conv.params),
        "active": active,
        "messages": [_message_json(rows[i]) for i in ids],
    }


def export_json(user_id: str, conversation_id: str, *, all_branches: bool = False,
                eng: Engine | None = None) -> str:
    """The conversation as a JSON document that `import_json` reads back."""
    data = export_dict(user_id, conversation_id, all_branches=all_branches, eng=eng)
    return json.dumps(data, ensure_ascii=False, indent=1)


def export_markdown(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> str:
    """The active path as Markdown, in the current UI language; reasoning folded away."""
    thread = load(user_id, conversation_id, last=None, eng=eng)
    conv = thread.conversation
    settings = ", ".join(f"{k}={v}" for k, v in _params_json(conv.params).items())
    out = [f"# {conv.title or t('convo.untitled')}", ""]
    out.append(t("convo.md_meta", model=conv.model or "?", endpoint=conv.endpoint or "?",
                 date=conv.created_at.strftime("%Y-%m-%d %H:%M UTC")))
    if settings:
        out += ["", t("convo.md_params", params=settings)]
    if conv.system:
        quoted = [f"> {line}" for line in conv.system.split("\n")]
        out += ["", f"## {t('convo.md_system')}", "", *quoted]
    for m in thread.messages:
        if m.role == "user":
            out += ["", f"## {t('convo.md_user')}", ""]
        else:
            out += ["", f"## {t('convo.md_assistant')}" + (f" · {m.model}" if m.model else ""), ""]
            if m.reasoning:
                out += ["<details>", f"<summary>{t('convo.md_reasoning')}</summary>", "",
                        m.reasoning, "", "</details>", ""]
        out.append(m.text)
        if m.status == "stopped":
            out += ["", f"*{t('convo.md_stopped')}*"]
        elif m.status == "error":
            out += ["", f"*{t('convo.md_error', kind=m.error_kind or '?')}*"]
    return "\n".join(out) + "\n"


def import_json(user_id: str, data: bytes | str, *, max_bytes: int = MAX_IMPORT_BYTES,
                eng: Engine | None = None) -> Conversation:
    """A new conversation from an `export_json` document, every branch and the active path.

    Refuses, with `ImportRefused`, a file over `max_bytes` (before reading it as JSON), one
    that is not JSON, and JSON of any other shape; nothing is saved then.
    """
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise ImportRefused("convo.import_too_big", size_mb=f"{size / 1e6:.1f}",
                            limit_mb=f"{max_bytes / 1e6:.0f}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportRefused("convo.import_not_json", detail=str(exc)[:200]) from None
    conv, items, active = _validate(doc)
    now = _now()
    cid = new_id()
    with _eng(eng).begin() as conn:
        conn.execute(_C.insert().values(
            id=cid, user_id=user_id, title=_clip_title(conv["title"]), created_at=now,
            updated_at=now, endpoint=conv["endpoint"], model=conv["model"],
            system_prompt=conv["system"], params=_params_json(conv["params"]), seq=0,
            leaf_id=None))
        new: dict[Any, int] = {}
        depth: dict[Any, int] = {}
        for old, parent, m in items:
            depth[old] = 0 if parent is None else depth[parent] + 1
            new[old] = _insert(conn, cid, m, new.get(parent), depth[old], now)
        leaf = new[active[-1]] if active else (new[items[-1][0]] if items else None)
        conn.execute(update(_C).where(_C.c.id == cid).values(leaf_id=leaf))
        return _get(conn, user_id, cid)


# --- inside --------------------------------------------------------------------------------

_SUMMARY_COLS = (_C.c.id, _C.c.title, _C.c.created_at, _C.c.updated_at, _C.c.endpoint,
                 _C.c.model)
_SNIPPET = 60  # characters either side of a match


def _eng(eng: Engine | None) -> Engine:
    return eng or store.engine()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _get(conn: Connection, user_id: str, conversation_id: str) -> Conversation:
    row = conn.execute(select(_C).where(_C.c.id == conversation_id,
                                        _C.c.user_id == user_id)).first()
    if row is None:
        raise ConversationNotFound(conversation_id)
    return Conversation(
        id=row.id, user_id=row.user_id, title=row.title, created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at), endpoint=row.endpoint, model=row.model,
        system=row.system_prompt, params=_params(row.params), seq=row.seq, leaf_id=row.leaf_id)


def _summary(row: Any) -> Summary:
    return Summary(row.id, row.title, _utc(row.created_at), _utc(row.updated_at), row.endpoint,
                   row.model)


def _message(row: Any) -> ChatMessage:
    return ChatMessage(
        role=row.role, text=row.text, reasoning=row.reasoning, status=row.status,
        error_kind=row.error_kind, call_id=row.call_id, model=row.model, id=row.id,
        parent_id=row.parent_id, position=row.position, created_at=_utc(row.created_at))


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
        model=message.model, id=mid, parent_id=parent_id, position=position, created_at=now)


def _insert(conn: Connection, conversation_id: str, m: ChatMessage, parent_id: int | None,
            position: int, now: datetime) -> int:
    result = conn.execute(_M.insert().values(
        conversation_id=conversation_id, parent_id=parent_id, role=m.role, text=m.text,
        reasoning=m.reasoning, status=m.status, error_kind=m.error_kind, call_id=m.call_id,
        model=m.model, created_at=now, position=position))
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


def _path(parents: dict[int, int | None], leaf: int | None) -> list[int]:
    out = []
    node = leaf
    while node is not None:
        out.append(node)
        node = parents[node]
    out.reverse()
    return out


def _messages_by_id(conn: Connection, conversation_id: str,
                    ids: Sequence[int]) -> dict[int, ChatMessage]:
    found: dict[int, ChatMessage] = {}
    for i in range(0, len(ids), 500):  # a bounded IN list for every database
        chunk = ids[i:i + 500]
        rows = conn.execute(select(_M).where(_M.c.conversation_id == conversation_id,
                                             _M.c.id.in_(chunk)))
        found.update((r.id, _message(r)) for r in rows)
    return found


def _params(value: dict[str, Any] | None) -> Params:
    known = {f.name for f in fields(Params)}
    return Params(**{k: v for k, v in (value or {}).items() if k in known})


def _params_json(params: Params) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in fields(Params)
            if getattr(params, f.name) is not None}


def _message_json(m: ChatMessage) -> dict[str, Any]:
    return {"id": m.id, "parent": m.parent_id, "role": m.role, "text": m.text,
            "reasoning": m.reasoning, "status": m.status, "error_kind": m.error_kind,
            "model": m.model,
            "created_at": m.created_at.isoformat() if m.created_at else None}


def _clip_title(title: str) -> str:
    return " ".join(title.split())[:200]


def _char_width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _snippet(text: str, needle: str) -> str:
    at = text.casefold().find(needle.casefold())
    if at < 0:
        return title_from_text(text, 2 * _SNIPPET)
    start, end = max(0, at - _SNIPPET), min(len(text), at + len(needle) + _SNIPPET)
    body = " ".join(text[start:end].split())
    return ("…" if start else "") + body + ("…" if end < len(text) else "")


_PARAM_TYPES = {"temperature": (int, float), "top_p": (int, float), "max_tokens": (int,),
                "seed": (int,), "num_ctx": (int,)}


def _validate(doc: Any) -> tuple[dict[str, Any], list[tuple[Any, Any, ChatMessage]], list[Any]]:
    """An export document checked field by field; `ImportRefused` naming the first fault."""
    def bad(where: str) -> ImportRefused:
        return ImportRefused("convo.import_bad_shape", where=where)

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad("format")
    if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
        raise bad("version")
    conv: dict[str, Any] = {}
    for name in ("title", "endpoint", "model", "system"):
        value = doc.get(name, "")
        if not isinstance(value, str):
            raise bad(name)
        conv[name] = value
    raw_params = doc.get("params") or {}
    if not isinstance(raw_params, dict):
        raise bad("params")
    for name, value in raw_params.items():
        kinds = _PARAM_TYPES.get(name)
        if kinds is None or isinstance(value, bool) or not isinstance(value, kinds):
            raise bad("params/" + name)  # a field path, not a catalog key
    conv["params"] = Params(**raw_params)
    raw = doc.get("messages")
    if not isinstance(raw, list):
        raise bad("messages")
    items: list[tuple[Any, Any, ChatMessage]] = []
    seen: set[Any] = set()
    for n, m in enumerate(raw):
        where = f"messages[{n}]"
        if not isinstance(m, dict):
            raise bad(where)
        mid, parent = m.get("id"), m.get("parent")
        if not isinstance(mid, (int, str)) or isinstance(mid, bool) or mid in seen:
            raise bad(f"{where}.id")
        # Parents come before their children.
        if parent is not None and (not isinstance(parent, (int, str)) or parent not in seen):
            raise bad(f"{where}.parent")
        if m.get("role") not in ROLES:
            raise bad(f"{where}.role")
        if not isinstance(m.get("text"), str) or not isinstance(m.get("reasoning", ""), str):
            raise bad(f"{where}.text")
        if m.get("status", "ok") not in MESSAGE_STATUSES:
            raise bad(f"{where}.status")
        if not all(isinstance(m.get(k), (str, type(None))) for k in ("error_kind", "model")):
            raise bad(f"{where}.model")
        seen.add(mid)
        items.append((mid, parent, ChatMessage(
            role=m["role"], text=m["text"], reasoning=m.get("reasoning", ""),
            status=m.get("status", "ok"), error_kind=m.get("error_kind"),
            model=m.get("model"))))
    active = doc.get("active") or []
    if not isinstance(active, list) or not all(
            isinstance(a, (int, str)) and a in seen for a in active):
        raise bad("active")
    by_id = {mid: parent for mid, parent, _ in items}
    for i, a in enumerate(active):  # a path: each the child of the one before
        if by_id[a] != (active[i - 1] if i else None):
            raise bad("active")
    return conv, items, active


__all__ = [
    "MAX_IMPORT_BYTES", "Branch", "ChatMessage", "Conversation", "ConversationChanged",
    "ConversationNotFound", "Fit", "Hit", "ImportRefused", "Spent", "Summary", "Thread",
    "add_message", "address", "continue_in_chat", "count_conversations", "create",
    "delete_conversation", "export_dict",
    "export_json", "export_markdown", "fit_context", "get", "group_by_day", "import_json",
    "list_conversations", "load", "new_id", "path", "rename", "save_reply", "search", "spent",
    "switch_branch", "title_from_text", "title_with_model", "to_send", "update_settings",
]
