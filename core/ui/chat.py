"""The chat view on a saved conversation: its messages drawn from the database at draw time,
sending one, regenerating and editing (branches), and what a reply cost.

The conversation is the state: a reload, a restart or another page loses nothing. The reply
streams on the call loop and is saved by the run's worker (`on_end`), so a Stop or a rerun
that ends the script run that started it saves it all the same.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import streamlit as st
from sqlalchemy import select

from core import conversations as convs
from core import money, store, writes
from core.config import Endpoint
from core.i18n import t
from core.metering import Call
from core.providers import Message, Params, ProviderError
from core.runner import Run
from core.ui.errors import show_error, show_saved_error
from core.ui.pickers import KEPT, Choice, remember
from core.ui.render import literal
from core.ui.render import show as show_markdown
from core.ui.session import current_user
from core.ui.stream import show_run, stop_run

MAX_MESSAGE_CHARS = 500_000
SHOW_STEP = 50  # messages drawn at first, and how many more "show earlier" adds
# C0 controls other than tab and newlines break JSON bodies, logs and PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The reply being streamed, as (run, info); it outlives the script run that started it.
_ACTIVE = "chat_active_reply"
# The conversation on screen: {"cid": id or None, "seq": the sequence number the user saw}.
VIEW = "chat_view"
SHOW = "chat_show"
PENDING = "chat_pending"  # a regenerate or an edit asked for by a button, done by the script
NOTICE = "chat_notice"  # a catalog key to tell the user once (a conversation changed elsewhere)
FIT = "chat_fit"  # the context the last request used: the gauge
ASK_TITLES = "chat_ask_titles"

# Context windows of common models (tokens), for servers that do not say.
KNOWN_WINDOWS = {
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "gpt-4.1": 1_047_576, "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576, "gpt-4-turbo": 128_000, "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385, "o1": 200_000, "o3": 200_000, "o3-mini": 200_000,
    "o4-mini": 200_000, "gpt-5": 400_000, "gpt-5-mini": 400_000, "gpt-5-nano": 400_000,
    "deepseek-chat": 65_536, "deepseek-reasoner": 65_536,
}
DEFAULT_WINDOW = 8_192
# Ollama's window is what the request asks for (num_ctx); more than this costs a laptop
# gigabytes of memory, so the app asks for at most this much even if the model could take more.
OLLAMA_MAX_CTX = 8_192


def clean_prompt(text: str | None) -> str | None:
    """The message to send, or None when there is nothing to send."""
    if text is None:
        return None
    text = _CONTROL.sub("", text)
    return text if text.strip() else None


# --- which conversation is open ------------------------------------------------------------


def _view() -> dict[str, Any]:
    return st.session_state.setdefault(VIEW, {"cid": None, "seq": 0})


def open_conversation(user: str) -> str | None:
    """The conversation the address names (`?c=<id>`), opened with its settings; None for a
    new chat. An id that does not exist or is another user's says so and opens a new chat."""
    view = _view()
    wanted = st.query_params.get("c")
    if wanted and wanted != view["cid"]:
        try:
            conv = convs.get(user, wanted)
        except convs.ConversationNotFound:
            st.session_state[NOTICE] = "convo.not_found"
            del st.query_params["c"]
            _set_view(None, 0)
            return None
        _set_view(conv.id, conv.seq)
        apply_settings(conv)
    elif not wanted and view["cid"]:
        st.query_params["c"] = view["cid"]  # back from another page: the address says it again
    return view["cid"]


def _set_view(cid: str | None, seq: int) -> None:
    view = _view()
    view["cid"], view["seq"] = cid, seq  # the same dict: the reply's worker updates it too
    st.session_state[SHOW] = SHOW_STEP


def new_chat() -> None:
    """Start a new chat (a button's callback): the settings on screen stay."""
    stop_reply()
    _set_view(None, 0)
    st.query_params.pop("c", None)


def go_to(cid: str) -> None:
    """Open a conversation (a button's callback)."""
    st.query_params["c"] = cid


def apply_settings(conv: convs.Conversation) -> None:
    """Feed the sidebar's widgets from what the conversation remembers."""
    p = conv.params
    values = {
        "chat_system": conv.system,
        "chat_custom_params": p.temperature is not None or p.top_p is not None,
        "chat_temperature": 0.7 if p.temperature is None else float(p.temperature),
        "chat_top_p": 1.0 if p.top_p is None else float(p.top_p),
        "chat_max_tokens": p.max_tokens or 0,
        "chat_seed": p.seed,
    }
    kept = st.session_state.setdefault(KEPT, {})
    for key, value in values.items():
        kept[key] = value
        st.session_state[key] = value
    if conv.endpoint:
        st.session_state["chat_prefer"] = {"endpoint": conv.endpoint, "model": conv.model}
        for key in [k for k in st.session_state if str(k).startswith("chat_model_")
                    or k == "chat_endpoint"]:
            del st.session_state[key]  # the picker chooses again, from the preference


def preferred_model() -> dict[str, str] | None:
    """The endpoint and model of the open conversation, for the picker."""
    return st.session_state.get("chat_prefer") if _view()["cid"] else None


def load_thread(user: str) -> convs.Thread | None:
    """The open conversation's last messages (how many: "show earlier"), or None."""
    cid = _view()["cid"]
    if cid is None:
        return None
    try:
        return convs.load(user, cid, last=st.session_state.get(SHOW, SHOW_STEP))
    except convs.ConversationNotFound:  # deleted in another tab
        st.session_state[NOTICE] = "convo.not_found"
        new_chat()
        return None


def show_notice() -> None:
    """A note kept for this run: the address's conversation is unknown, or changed elsewhere."""
    key = st.session_state.pop(NOTICE, None)
    if key:
        st.warning(t(key), icon=":material/info:")


# --- drawing -------------------------------------------------------------------------------


def show_thread(thread: convs.Thread | None, user: str, endpoints: Sequence[Endpoint], *,
                action: tuple[Any, ...] | None = None) -> None:
    """The conversation's messages; a reply still streaming goes on live after its question.

    With a regenerate or an edit about to be sent (`action`), the branch is drawn only up to
    where the new one starts: the answer being replaced is not shown above its successor.
    """
    if thread is None:
        return
    if action is not None:
        ids = [m.id for m in thread.messages]
        target = action[1]
        if target in ids:
            keep = ids.index(target) + (1 if action[0] == "regen" else 0)
            thread = replace(thread, messages=thread.messages[:keep])
    if thread.earlier:
        st.button(t("convo.show_earlier", n=thread.earlier), key="chat_show_earlier",
                  icon=":material/expand_less:", on_click=_show_more)
    rows = _call_rows([m.call_id for m in thread.messages if m.call_id is not None])
    urls = {e.name: e.shown_url for e in endpoints}
    last = thread.messages[-1] if thread.messages else None
    for m in thread.messages:
        _show_saved(m, thread, rows.get(m.call_id), urls.get(thread.conversation.endpoint, "?"),
                    is_last=m is last)
    active = st.session_state.get(_ACTIVE)
    if (active is not None and not active[0].finished and active[1]["cid"] == thread.conversation.id
            and last is not None and active[1]["parent"] == last.id):
        _follow(active[0])
        _redraw_saved(active[0])
    if writes.unsaved(conversation_id=thread.conversation.id):
        st.warning(t("writes.unsaved_reply"), icon=":material/cloud_off:")


def _show_more() -> None:
    st.session_state[SHOW] = st.session_state.get(SHOW, SHOW_STEP) + SHOW_STEP


def _show_saved(m: convs.ChatMessage, thread: convs.Thread, row: dict[str, Any] | None,
                url: str, *, is_last: bool) -> None:
    assert m.id is not None
    with st.chat_message(m.role):
        if m.reasoning:
            with st.expander(t("chat.thought"), icon=":material/psychology:"):
                show_markdown(m.reasoning)
        if m.text:
            if m.role == "user":
                st.text(m.text, width="stretch")  # as typed: a "## " line is not a heading
            else:
                show_markdown(m.text)
        if m.role == "assistant":
            _outcome(m, row, url)
        _tools(m, thread, is_last=is_last)


def _outcome(m: convs.ChatMessage, row: dict[str, Any] | None, url: str) -> None:
    if m.status == "stopped":
        st.caption("⏹ " + t("chat.stopped"))
    if row is not None and row.get("finish_reason") == "length":
        st.caption("✂ " + t("chat.cut_by_length"))
    if m.status == "error":
        _saved_error(m, row, url)
    if row is not None and (m.text or m.status == "stopped") and row["status"] != "running":
        st.caption(meta_from_row(row))


def _saved_error(m: convs.ChatMessage, row: dict[str, Any] | None, url: str) -> None:
    """An error as data: its catalog key, filled at draw time in the reader's language."""
    show_saved_error(m.error_kind, m.model, url, row)  # the URL shown as the viewer may


def _tools(m: convs.ChatMessage, thread: convs.Thread, *, is_last: bool) -> None:
    """Branch arrows, regenerate (an answer) or edit (a question); Retry on a failed last turn."""
    assert m.id is not None
    branch = thread.branches.get(m.id)
    busy = _streaming()
    row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    if branch is not None and branch.count > 1:
        row.button("‹", key=f"chat_prev_{m.id}", type="tertiary",
                       disabled=busy or branch.step(-1) is None, on_click=_switch,
                       args=(branch.step(-1),), help=t("convo.prev_branch"))
        row.markdown(f"{branch.index}/{branch.count}", width="content")
        row.button("›", key=f"chat_next_{m.id}", type="tertiary",
                       disabled=busy or branch.step(1) is None, on_click=_switch,
                       args=(branch.step(1),), help=t("convo.next_branch"))
    if m.role == "assistant" and m.parent_id is not None:
        if is_last and m.status == "error":
            row.button(t("chat.retry"), key=f"chat_retry_{m.id}", icon=":material/refresh:",
                           disabled=busy, on_click=_ask, args=(("regen", m.parent_id),))
        else:
            row.button(t("convo.regenerate"), key=f"chat_regen_{m.id}",
                           icon=":material/refresh:", type="tertiary", disabled=busy,
                           on_click=_ask, args=(("regen", m.parent_id),))
    elif m.role == "user":
        with row.popover(t("convo.edit"), icon=":material/edit:", disabled=busy):
            st.text_area(t("convo.edit"), value=m.text, key=f"chat_edit_text_{m.id}")
            st.button(t("convo.edit_send"), key=f"chat_edit_{m.id}", on_click=_edit,
                      args=(m.id, f"chat_edit_text_{m.id}"), icon=":material/send:")


def _streaming() -> bool:
    active = st.session_state.get(_ACTIVE)
    return active is not None and not active[0].finished


def _ask(action: tuple[Any, ...]) -> None:
    st.session_state[PENDING] = action


def _edit(message_id: int, key: str) -> None:
    text = clean_prompt(st.session_state.get(key))
    if text is not None:
        st.session_state[PENDING] = ("edit", message_id, text)


def _switch(message_id: int | None) -> None:
    view = _view()
    if message_id is None or view["cid"] is None:
        return
    try:
        view["seq"] = convs.switch_branch(current_user(), view["cid"], message_id, seq=view["seq"])
    except convs.ConversationChanged:
        st.session_state[NOTICE] = "convo.changed"
    except convs.ConversationNotFound:
        st.session_state[NOTICE] = "convo.not_found"


def mark_seen(thread: convs.Thread | None) -> None:
    """The user has seen the conversation as drawn in this run (at the end of the run): a
    message sent from here on is checked against it. Never moves back: the reply's worker may
    have recorded a later write of this tab's own."""
    view = _view()
    if thread is not None and view["cid"] == thread.conversation.id:
        view["seq"] = max(view["seq"], thread.seq)


def pending_action() -> tuple[Any, ...] | None:
    """A regenerate or an edit a button asked for, once."""
    return st.session_state.pop(PENDING, None)


def _call_rows(ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    c = store.calls
    with store.engine().connect() as conn:
        rows = conn.execute(select(c).where(c.c.id.in_(ids)))
        return {r.id: dict(r._mapping) for r in rows}


def meta_line(call: Call) -> str:
    """Model, tokens, time to first token, speed and cost of one reply."""
    usage, reply = call.usage or call.reply.estimate_usage(), call.reply
    return _meta(call.model, usage.input_tokens, usage.output_tokens, usage.estimated,
                 reply.ttft, reply.output_tokens_per_s, call.cost)


def meta_from_row(row: dict[str, Any]) -> str:
    """The same line from the call log, for a reply drawn again later."""
    speed = None
    if row.get("ttft_s") is not None and row.get("total_s") is not None:
        span = row["total_s"] - row["ttft_s"]
        speed = row["output_tokens"] / span if span > 0 and not row["estimated"] else None
    return _meta(row["model"], row["input_tokens"], row["output_tokens"], row["estimated"],
                 row.get("ttft_s"), speed, row.get("cost_usd"))


def _meta(model: str, tokens_in: int, tokens_out: int, estimated: bool, ttft: float | None,
          speed: float | None, cost: Any) -> str:
    parts = [literal(model)]  # a name as typed, never Markdown
    tokens = t("meta.tokens", input=tokens_in, output=tokens_out)
    parts.append(tokens + (" " + t("meta.estimated") if estimated else ""))
    if ttft is not None:
        parts.append(t("meta.ttft", s=f"{ttft:.2f}"))
    if speed:
        parts.append(t("meta.speed", v=f"{speed:.1f}"))
    parts.append(t("meta.cost", cost=money.cost(cost, money.view(current_user()))))
    return " · ".join(parts)


def stop_reply() -> None:
    """Stop the reply still streaming, if any: it keeps its partial answer (a new message
    replaces the stream rather than wait for it)."""
    active = st.session_state.get(_ACTIVE)
    if active is not None:
        stop_run(active[0])


# --- sending -------------------------------------------------------------------------------


def context_window(choice: Choice) -> int:
    """The model's context window in tokens: Ollama's num_ctx the app asks for (the model's own
    length when smaller), a known window, else a default."""
    endpoint, model = choice.endpoint, choice.model
    if endpoint.kind == "ollama":
        cache = st.session_state.setdefault("_ctx", {})
        if (endpoint.name, model) not in cache:
            length = None
            try:
                from core.providers import provider_for

                length = provider_for(endpoint).details(model).details.get("context_length")
            except Exception:  # noqa: BLE001 - an unknown window: the default will do
                length = None
            cache[(endpoint.name, model)] = min(int(length), OLLAMA_MAX_CTX) if length \
                else OLLAMA_MAX_CTX
        return cache[(endpoint.name, model)]
    base = model.split("/")[-1]
    for name in sorted(KNOWN_WINDOWS, key=len, reverse=True):
        if base == name or base.startswith(name + "-"):
            return KNOWN_WINDOWS[name]
    return DEFAULT_WINDOW


def sendable(path_messages: Sequence[convs.ChatMessage]) -> list[convs.ChatMessage]:
    """The turns a request may carry: a question whose answer failed or is empty is left out
    with its answer, so a request never carries two user messages in a row."""
    out: list[convs.ChatMessage] = []
    for i, m in enumerate(path_messages):
        if m.role != "user":
            continue
        answer = path_messages[i + 1] if i + 1 < len(path_messages) else None
        if answer is None:
            out.append(m)
        elif answer.text and answer.status != "error":
            out += [m, answer]
    return out


def send(prompt: str, choice: Choice, params: Params, thread: convs.Thread | None, *,
         user: str, system: str = "") -> None:
    """Save the message in the open conversation (a new one if none), then stream, meter and
    save the answer."""
    if len(prompt) > MAX_MESSAGE_CHARS:
        st.warning(t("chat.too_long", n=f"{len(prompt):,}", limit=f"{MAX_MESSAGE_CHARS:,}"))
        return
    stop_reply()
    remember(user, choice)
    active = st.session_state.get(_ACTIVE)
    if (active is not None and thread is not None and active[1]["cid"] == thread.conversation.id
            and active[1]["parent"] == thread.leaf_id):
        # The answer this message follows was still streaming when the page read the
        # conversation: once its worker has saved it, the new message goes below it.
        active[0].wait(10)
        try:
            thread = convs.load(user, thread.conversation.id, last=1)
        except convs.ConversationNotFound:
            thread = None
    try:
        cid, seq = _settings_saved(user, choice, params, system, thread)
        parent = thread.leaf_id if thread is not None else None
        question, seq = convs.add_message(user, cid, convs.ChatMessage("user", prompt),
                                          parent_id=parent, seq=seq)
    except convs.ConversationChanged:
        _changed()
        return
    _view()["seq"] = seq
    _show_plain(question)
    path_before = convs.path(user, cid)
    _answer(user, cid, question, path_before, choice, params, system, seq)


def regenerate(question_id: int, choice: Choice, params: Params, thread: convs.Thread, *,
               user: str, system: str = "", edited: str | None = None) -> None:
    """Answer a question again (a sibling answer), or, with `edited`, send an edited copy of a
    question as its sibling and answer that: each opens a new branch."""
    stop_reply()
    remember(user, choice)
    cid = thread.conversation.id
    full = convs.path(user, cid)
    ids = [m.id for m in full]
    if question_id not in ids:
        return
    at = ids.index(question_id)
    try:
        cid, seq = _settings_saved(user, choice, params, system, thread)
        if edited is not None:
            question, seq = convs.add_message(user, cid, convs.ChatMessage("user", edited),
                                              parent_id=full[at].parent_id, seq=seq)
        else:
            question = full[at]
    except convs.ConversationChanged:
        _changed()
        return
    _view()["seq"] = seq
    if edited is not None:
        _show_plain(question)
    _answer(user, cid, question, [*full[:at], question], choice, params, system, seq)


def _changed() -> None:
    st.warning(t("convo.changed"), icon=":material/sync_problem:")
    cid = _view()["cid"]
    if cid is not None:
        try:
            _view()["seq"] = convs.get(current_user(), cid).seq
        except convs.ConversationNotFound:
            new_chat()


def _settings_saved(user: str, choice: Choice, params: Params, system: str,
                    thread: convs.Thread | None) -> tuple[str, int]:
    """The conversation to write to, remembering the settings it is sent with."""
    if thread is None:
        conv = convs.create(user, endpoint=choice.endpoint.name, model=choice.model,
                            system=system, params=params)
        _set_view(conv.id, conv.seq)
        st.query_params["c"] = conv.id
        return conv.id, conv.seq
    if thread.seq != _view()["seq"]:  # written elsewhere since this tab drew it
        raise convs.ConversationChanged(thread.conversation.id, thread.seq)
    conv = thread.conversation
    if (conv.endpoint, conv.model, conv.system, conv.params) == (
            choice.endpoint.name, choice.model, system, params):
        return conv.id, thread.seq
    seq = convs.update_settings(user, conv.id, seq=thread.seq, endpoint=choice.endpoint.name,
                                model=choice.model, system=system, params=params)
    return conv.id, seq


def _show_plain(m: convs.ChatMessage) -> None:
    with st.chat_message(m.role):
        st.text(m.text, width="stretch")


def _answer(user: str, cid: str, question: convs.ChatMessage,
            path_messages: list[convs.ChatMessage], choice: Choice, params: Params, system: str,
            seq: int) -> None:
    window = context_window(choice)
    reserve = params.max_tokens or min(1024, window // 4)
    fit = convs.fit_context(system, sendable(path_messages), window, reserve)
    _keep_fit(cid, choice, system, fit, window)
    sent_params = replace(params, num_ctx=window) if choice.endpoint.kind == "ollama" else params
    call = Call(choice.endpoint, choice.model, fit.messages, sent_params, user_id=user,
                source="chat", conversation_id=cid)
    info = {"cid": cid, "parent": question.id}
    first = question.position == 0 and question.parent_id is None
    ask_title = first and bool(st.session_state.get(ASK_TITLES))
    run = Run([call], on_end=functools.partial(
        _save, user, cid, question, _view(), seq, ask_title, choice.endpoint))
    # Registered before it starts: writing state is where a pending rerun takes effect, and
    # a run that went out must always be the one the next script run finds.
    st.session_state[_ACTIVE] = (run, info)
    run.start()
    if fit.left_out:
        st.caption("✂ " + t("convo.left_out", n=len(fit.left_out)))
    _follow(run)
    _redraw_saved(run)


def _redraw_saved(run: Run) -> None:
    # The answer has been saved: draw the page again from the conversation, so the sidebar
    # lists it and the answer gets its buttons (regenerate, branches).
    if run.finished:
        st.rerun()


def _keep_fit(cid: str, choice: Choice, system: str, fit: convs.Fit, window: int) -> None:
    st.session_state[FIT] = {"cid": cid, "tokens": fit.tokens, "window": window,
                             "left_out": len(fit.left_out),
                             "for": (choice.endpoint.name, choice.model, system)}


def measure_context(user: str, thread: convs.Thread | None, choice: Choice | None,
                    params: Params, system: str) -> None:
    """How full the model's context is with the open conversation, for the sidebar's gauge:
    worked out when a conversation is opened or the model or system prompt changes (it reads
    the whole branch), and after each message sent."""
    if thread is None or choice is None or not thread.messages:
        return
    cid = thread.conversation.id
    fit = st.session_state.get(FIT)
    if fit and fit["cid"] == cid and fit.get("for") == (choice.endpoint.name, choice.model,
                                                         system):
        return
    window = context_window(choice)
    reserve = params.max_tokens or min(1024, window // 4)
    path_messages = convs.path(user, cid)
    _keep_fit(cid, choice, system, convs.fit_context(system, sendable(path_messages), window,
                                                     reserve), window)


def _follow(run: Run) -> None:
    with st.chat_message("assistant"):
        show_run(run, [st.container()])
        call = run.calls[0]
        if call.status == "stopped":
            st.caption("⏹ " + t("chat.stopped"))
        if call.finish_reason == "length":
            st.caption("✂ " + t("chat.cut_by_length"))
        if call.error is not None:
            show_error(call.error)
        if call.text or call.status == "stopped":
            st.caption(meta_line(call))


def _hint_name(err: ProviderError | None) -> str | None:
    if err is None:
        return None
    return err.hint.removeprefix("error.")


def _save(user: str, cid: str, question: convs.ChatMessage, view: dict[str, Any], seq: int,
          ask_title: bool, endpoint: Endpoint, call: Call) -> None:
    """The answer as it ended, saved (on the run's worker thread, so a Stop or a rerun that
    ends the script run loses nothing)."""
    status = call.status if call.status in ("ok", "stopped") else "error"
    reply = convs.ChatMessage("assistant", call.text, call.reasoning, status=status,
                              error_kind=_hint_name(call.error) if status == "error" else None,
                              call_id=call.row_id, model=call.model)
    assert question.id is not None
    try:
        saved = convs.save_reply(user, cid, reply, parent_id=question.id, key=call.key)
        current = convs.get(user, cid)
        if current.leaf_id != saved.id and saved.id is not None:
            # A regenerated answer: the branch on screen moves onto it from the old answer.
            convs.switch_branch(user, cid, saved.id, seq=current.seq)
        if ask_title and status == "ok":
            _title_from_model(user, cid, question.text, endpoint, call.model)
        after = convs.get(user, cid).seq
    except convs.ConversationNotFound:  # deleted while it streamed: nothing to save to
        return
    except writes.NotSavedYet:  # kept and saved once the database lets it; the page says so
        return
    if view.get("cid") == cid and view.get("seq") == seq:
        view["seq"] = after  # our own write: the tab is not told "changed elsewhere"


def _title_from_model(user: str, cid: str, text: str, endpoint: Endpoint, model: str) -> None:
    def ask(messages: list[Message]) -> str:
        call = Call(endpoint, model, messages, Params(max_tokens=30), user_id=user,
                    source="title", conversation_id=cid)
        call.run_sync(timeout=60)
        if call.error is not None:
            raise call.error
        return call.text

    convs.rename(user, cid, convs.title_with_model(text, ask))
