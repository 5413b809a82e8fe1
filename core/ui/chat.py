"""The chat view on a saved conversation: its messages drawn from the database at draw time,
sending one, regenerating and editing (branches), and what a reply cost.

The conversation is the state: a reload, a restart or another page loses nothing. The turn
itself (request, call, saving, titles) is `core.chat`'s; this module keeps the session's
state (which conversation is open, the seq the user saw, the turn streaming) and draws. An
answer this session streams is drawn live; one that another run of the page started (a
reload, another tab) is followed by a fragment that polls. One concern, the chat view, whose
drawing helpers share that session state: it reads better whole than split (~540 lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import streamlit as st
from sqlalchemy import select

from core import chat as flow
from core import conversations as convs
from core import money, store, writes
from core.chat import clean_prompt
from core.config import Endpoint
from core.i18n import t
from core.metering import Call
from core.providers import Params
from core.ui.errors import show_error, show_saved_error
from core.ui.pickers import KEPT, Choice, remember
from core.ui.render import literal, markdown
from core.ui.render import show as show_markdown
from core.ui.session import current_user
from core.ui.stream import show_run, stop_run

SHOW_STEP = 50  # messages drawn at first, and how many more "show earlier" adds
# The reply being streamed (a core.chat.ChatTurn); it outlives the script run that started it.
_ACTIVE = "chat_active_reply"
# The conversation on screen: {"cid": id or None, "seq": the sequence number the user saw}.
VIEW = "chat_view"
SHOW = "chat_show"
PENDING = "chat_pending"  # a regenerate or an edit asked for by a button, done by the script
NOTICE = "chat_notice"  # a catalog key to tell the user once (a conversation changed elsewhere)
FIT = "chat_fit"  # the context the last request used: the gauge
ASK_TITLES = "chat_ask_titles"
# How often a running answer that another run of the page started is drawn again.
WATCH_S = 1.0


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
    if thread.notes:
        st.warning(t("convo.stored_dropped", what="; ".join(thread.notes)),
                   icon=":material/healing:")
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
    messages = thread.messages
    streaming = messages[-1] if messages and messages[-1].status == "running" else None
    if streaming is not None:
        messages = messages[:-1]  # drawn live below, not as saved
    for m in messages:
        _show_saved(m, thread, rows.get(m.call_id), urls.get(thread.conversation.endpoint, "?"),
                    is_last=m is thread.messages[-1])
    turn = _active()
    if streaming is not None and turn is not None and turn.answer.id == streaming.id:
        # This session's answer, live; one that ended since the read above is drawn as it
        # ended (a rerun would find it saved, or, "not saved yet", still running).
        finished = turn.finished
        _follow(turn)
        if not finished:
            _redraw_saved(turn)
    elif streaming is not None:
        # Another run of the page started it (a reload, another tab, a restart since):
        # followed from this process's turn, or from its heartbeat in the database.
        _watch(user, thread.conversation.id, streaming.id)
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
    elif m.status == "interrupted":
        st.warning(t("chat.interrupted"), icon=":material/power_off:")
    elif m.status == "running":  # above a newer message: another tab sent below it
        st.caption(t("chat.still_running"))
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
    """Branch arrows, regenerate (an answer) or edit (a question); Retry on a last answer that
    failed or was interrupted."""
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
        if is_last and m.status in ("error", "interrupted"):
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


def _active() -> flow.ChatTurn | None:
    return st.session_state.get(_ACTIVE)


def _streaming() -> bool:
    turn = _active()
    return turn is not None and not turn.finished


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
    turn = _active()
    if turn is not None:
        stop_run(turn.run)


def forget(cid: str) -> None:
    """A conversation is being deleted: its answer still streaming and its title being asked
    are stopped, so nothing is saved into it."""
    turn = _active()
    if turn is not None and turn.cid == cid:
        stop_run(turn.run)
        turn.cancel_title()


# --- sending -------------------------------------------------------------------------------


def _settings(choice: Choice, params: Params, system: str) -> flow.Settings:
    return flow.Settings(choice.endpoint, choice.model, params, system)


def send(prompt: str, choice: Choice, params: Params, thread: convs.Thread | None, *,
         user: str, system: str = "") -> None:
    """Save the message in the open conversation (a new one if none), then stream, meter and
    save the answer."""
    stop_reply()
    remember(user, choice)
    turn = _active()
    if (turn is not None and thread is not None and turn.cid == thread.conversation.id
            and thread.leaf_id == turn.answer.id):
        # The answer this message follows was still streaming when the page read the
        # conversation: once its worker has saved it whole, the request carries all of it.
        turn.wait(10)
        try:
            thread = convs.load(user, thread.conversation.id, last=1)
        except convs.ConversationNotFound:
            thread = None
    view = _view()
    try:
        started = flow.send(
            user, prompt, _settings(choice, params, system),
            conversation=thread.conversation if thread is not None else None,
            parent_id=thread.leaf_id if thread is not None else None,
            seq=view["seq"] if thread is not None else 0,
            ask_title=bool(st.session_state.get(ASK_TITLES)))
    except flow.ChatRefused as refused:
        st.warning(t(refused.key, **refused.context))
        return
    except convs.ConversationChanged:
        _changed()
        return
    if thread is None:
        _set_view(started.cid, started.seq)
        st.query_params["c"] = started.cid
    view["seq"] = started.seq
    _show_plain(started.question)
    _answer(started, choice)


def regenerate(question_id: int, choice: Choice, params: Params, thread: convs.Thread, *,
               user: str, system: str = "", edited: str | None = None) -> None:
    """Answer a question again (a sibling answer), or, with `edited`, send an edited copy of a
    question as its sibling and answer that: each opens a new branch."""
    stop_reply()
    remember(user, choice)
    view = _view()
    try:
        started = flow.regenerate(user, _settings(choice, params, system), thread.conversation,
                                  question_id, seq=view["seq"], edited=edited,
                                  ask_title=bool(st.session_state.get(ASK_TITLES)))
    except flow.ChatRefused as refused:
        st.warning(t(refused.key, **refused.context))
        return
    except convs.ConversationChanged:
        _changed()
        return
    if started is None:
        return
    view["seq"] = started.seq
    if edited is not None:
        _show_plain(started.question)
    _answer(started, choice)


def _changed() -> None:
    st.warning(t("convo.changed"), icon=":material/sync_problem:")
    cid = _view()["cid"]
    if cid is not None:
        try:
            _view()["seq"] = convs.get(current_user(), cid).seq
        except convs.ConversationNotFound:
            new_chat()


def _show_plain(m: convs.ChatMessage) -> None:
    with st.chat_message(m.role):
        st.text(m.text, width="stretch")


def _answer(turn: flow.ChatTurn, choice: Choice) -> None:
    _keep_fit(turn.cid, choice, turn.settings.system, turn.request)
    # Registered before it starts: writing state is where a pending rerun takes effect, and
    # a run that went out must always be the one the next script run finds.
    st.session_state[_ACTIVE] = turn
    turn.start()
    if turn.request.fit.left_out:
        st.caption("✂ " + t("convo.left_out", n=len(turn.request.fit.left_out)))
    _follow(turn)
    _redraw_saved(turn)


def _redraw_saved(turn: flow.ChatTurn) -> None:
    # The answer has been saved: draw the page again from the conversation, so the sidebar
    # lists it and the answer gets its buttons (regenerate, branches).
    if turn.finished:
        st.rerun()


@st.fragment(run_every=WATCH_S)
def _watch(user: str, cid: str, answer_id: int) -> None:
    """A running answer this run of the page did not start, redrawn every WATCH_S: from its
    turn when this process streams it (with Stop), else from its heartbeat in the database.
    Once it has ended the whole page is drawn again, with the answer as saved."""
    turn = flow.live(answer_id)
    if turn is not None:
        text, reasoning, running = turn.call.text, turn.call.reasoning, not turn.finished
    else:
        try:
            m = convs.message(user, cid, answer_id)
        except convs.ConversationNotFound:
            st.rerun()
            return
        text, reasoning, running = m.text, m.reasoning, m.status == "running"
    if not running:
        st.rerun()
    with st.chat_message("assistant"):
        if reasoning:
            with st.expander(t("chat.thinking"), expanded=not text,
                             icon=":material/psychology:"):
                show_markdown(reasoning)
        if text:
            st.markdown(markdown(text) + " ▌")
        else:
            st.markdown(f":gray[{t('chat.waiting')}]")
        if turn is None:
            st.caption(t("chat.following"))
        else:
            st.button(t("run.stop"), key=f"chat_watch_stop_{answer_id}",
                      icon=":material/stop_circle:", on_click=turn.stop)


def _keep_fit(cid: str, choice: Choice, system: str, req: flow.Request) -> None:
    st.session_state[FIT] = {"cid": cid, "tokens": req.fit.tokens, "window": req.window,
                             "left_out": len(req.fit.left_out),
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
    req = flow.request(_settings(choice, params, system), convs.path(user, cid))
    _keep_fit(cid, choice, system, req)


def _follow(turn: flow.ChatTurn) -> None:
    with st.chat_message("assistant"):
        show_run(turn.run, [st.container()])
        call = turn.call
        if call.status == "stopped":
            st.caption("⏹ " + t("chat.stopped"))
        if call.finish_reason == "length":
            st.caption("✂ " + t("chat.cut_by_length"))
        if call.error is not None:
            show_error(call.error)
        if call.text or call.status == "stopped":
            st.caption(meta_line(call))
