"""A conversation out of the app and back in: JSON export and import, Markdown export.

An export holds settings (endpoint name, model, parameters; never a key or an address), the
active path and, when asked, every branch. An import is checked field by field before
anything is saved: a file that cannot become a conversation is refused with `ImportRefused`,
whose `key` and `context` make the sentence the user reads.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from core import conversations as convs
from core.conversations import MAX_TEXT_CHARS, ROLES, ChatMessage, Conversation, strip_controls
from core.i18n import t
from core.providers.base import PARAM_RANGES, Params, param_ok

MAX_IMPORT_BYTES = 50 * 1024 * 1024  # refused before parsing
FORMAT = "owngpt.conversation"
FORMAT_VERSION = 1
IMPORTED_STATUSES = ("ok", "stopped", "error", "interrupted", "running")
NAME_CHARS = 200  # an endpoint's or a model's name, as the database keeps it


class ImportRefused(ValueError):
    """An import file that cannot become a conversation; `key` and `context` say why."""

    def __init__(self, key: str, **context: Any) -> None:
        self.key = key
        self.context = context
        detail = ", ".join(f"{k}={v}" for k, v in context.items())
        super().__init__(f"{key}: {detail}" if detail else key)


def export_dict(user_id: str, conversation_id: str, *, all_branches: bool = False,
                eng: Engine | None = None) -> dict[str, Any]:
    """The conversation as plain data: settings (endpoint name, model, parameters; never a
    key or an address), the active path, and every branch when asked."""
    if all_branches:
        conv, messages, active = convs.tree(user_id, conversation_id, eng=eng)
    else:
        thread = convs.load(user_id, conversation_id, last=None, eng=eng)
        conv, messages = thread.conversation, thread.messages
        active = [m.id for m in messages if m.id is not None]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "title": conv.title,
        "created_at": conv.created_at.isoformat(),
        "updated_at": conv.updated_at.isoformat(),
        "endpoint": conv.endpoint,
        "model": conv.model,
        "system": conv.system,
        "params": convs.params_dict(conv.params),
        "active": active,
        "messages": [_message_json(m) for m in messages],
    }


def export_json(user_id: str, conversation_id: str, *, all_branches: bool = False,
                eng: Engine | None = None) -> str:
    """The conversation as a JSON document that `import_json` reads back."""
    data = export_dict(user_id, conversation_id, all_branches=all_branches, eng=eng)
    return json.dumps(data, ensure_ascii=False, indent=1)


def export_markdown(user_id: str, conversation_id: str, *, eng: Engine | None = None) -> str:
    """The active path as Markdown, in the current UI language; reasoning folded away."""
    thread = convs.load(user_id, conversation_id, last=None, eng=eng)
    conv = thread.conversation
    settings = ", ".join(f"{k}={v}" for k, v in convs.params_dict(conv.params).items())
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
        elif m.status in ("interrupted", "running"):
            out += ["", f"*{t('convo.md_interrupted')}*"]
        elif m.status == "error":
            out += ["", f"*{t('convo.md_error', kind=m.error_kind or '?')}*"]
    return "\n".join(out) + "\n"


def import_json(user_id: str, data: bytes | str, *, max_bytes: int = MAX_IMPORT_BYTES,
                eng: Engine | None = None) -> Conversation:
    """A new conversation from an `export_json` document, every branch and the active path.

    Refuses, with `ImportRefused`, a file over `max_bytes` (before reading it as JSON), one
    that is not JSON or nests too deeply to read, JSON of any other shape, a parameter out of
    its range and a message over MAX_TEXT_CHARS; nothing is saved then. Control characters
    (NUL...) are taken out of every text: PostgreSQL refuses NUL.
    """
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise ImportRefused("convo.import_too_big", size_mb=f"{size / 1e6:.1f}",
                            limit_mb=f"{max_bytes / 1e6:.0f}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportRefused("convo.import_not_json", detail=str(exc)[:200]) from None
    except RecursionError:  # [[[[...]]]] thousands deep: Python's parser gives up
        raise ImportRefused("convo.import_too_deep") from None
    conv, items, active = _validate(doc)
    return convs.create_tree(user_id, title=conv["title"], endpoint=conv["endpoint"],
                             model=conv["model"], system=conv["system"], params=conv["params"],
                             items=items, active=active, eng=eng)


def _message_json(m: ChatMessage) -> dict[str, Any]:
    return {"id": m.id, "parent": m.parent_id, "role": m.role, "text": m.text,
            "reasoning": m.reasoning, "status": m.status, "error_kind": m.error_kind,
            "model": m.model,
            "created_at": m.created_at.isoformat() if m.created_at else None}


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
        if not isinstance(value, str) or (name in ("endpoint", "model")
                                          and len(value) > NAME_CHARS):
            raise bad(name)
        if len(value) > MAX_TEXT_CHARS:
            raise ImportRefused("convo.import_too_long", where=name, n=f"{len(value):,}",
                                limit=f"{MAX_TEXT_CHARS:,}")
        conv[name] = strip_controls(value)
    raw_params = doc.get("params") or {}
    if not isinstance(raw_params, dict):
        raise bad("params")
    for name, value in raw_params.items():
        kinds = _PARAM_TYPES.get(name)
        if kinds is None or isinstance(value, bool) or not isinstance(value, kinds):
            raise bad("params/" + name)  # a field path, not a catalog key
        if not param_ok(name, value):
            low, high = PARAM_RANGES[name]
            raise ImportRefused("convo.import_out_of_range", where="params/" + name,
                                value=str(value)[:40], low=f"{low:g}", high=f"{high:g}")
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
        text, reasoning = m.get("text"), m.get("reasoning", "")
        if not isinstance(text, str) or not isinstance(reasoning, str):
            raise bad(f"{where}.text")
        for name, value in (("text", text), ("reasoning", reasoning)):
            if len(value) > MAX_TEXT_CHARS:
                raise ImportRefused("convo.import_too_long", where=f"{where}.{name}",
                                    n=f"{len(value):,}", limit=f"{MAX_TEXT_CHARS:,}")
        if m.get("status", "ok") not in IMPORTED_STATUSES:
            raise bad(f"{where}.status")
        for name, longest in (("error_kind", 40), ("model", NAME_CHARS)):
            value = m.get(name)
            if not isinstance(value, (str, type(None))) or len(value or "") > longest:
                raise bad(f"{where}.{name}")
        seen.add(mid)
        status = m.get("status", "ok")
        items.append((mid, parent, ChatMessage(
            role=m["role"], text=strip_controls(text), reasoning=strip_controls(reasoning),
            # Exported while it streamed: no call of this app will ever complete it.
            status="interrupted" if status == "running" else status,
            error_kind=m.get("error_kind"),
            model=strip_controls(m["model"]) if m.get("model") else None)))
    active = doc.get("active") or []
    if not isinstance(active, list) or not all(
            isinstance(a, (int, str)) and a in seen for a in active):
        raise bad("active")
    by_id = {mid: parent for mid, parent, _ in items}
    for i, a in enumerate(active):  # a path: each the child of the one before
        if by_id[a] != (active[i - 1] if i else None):
            raise bad("active")
    return conv, items, active
