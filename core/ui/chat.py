"""The chat view: messages on screen, sending one, and what a reply cost."""

from __future__ import annotations

import functools
import re
from typing import Any

import streamlit as st

from core.i18n import t
from core.metering import Call
from core.providers import Message, Params
from core.runner import Run
from core.ui.errors import show_error
from core.ui.pickers import Choice, remember
from core.ui.stream import show_run, stop_run

MAX_MESSAGE_CHARS = 500_000
# C0 controls other than tab and newlines break JSON bodies, logs and PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The reply being streamed, as (run, message); it outlives the script run that started it.
_ACTIVE = "chat_active_reply"


def clean_prompt(text: str | None) -> str | None:
    """The message to send, or None when there is nothing to send."""
    if text is None:
        return None
    text = _CONTROL.sub("", text)
    return text if text.strip() else None


def show_message(message: dict[str, Any]) -> None:
    """One message as the user saw it, including a stopped or failed reply."""
    with st.chat_message(message["role"]):
        if message.get("reasoning"):
            with st.expander(t("chat.thought"), icon=":material/psychology:"):
                st.markdown(message["reasoning"])
        if message["content"]:
            st.markdown(message["content"])
        show_outcome(message)


def show_outcome(message: dict[str, Any]) -> None:
    """Below a reply: stopped / error notes and the meta line (tokens, speed, cost)."""
    if message.get("status") == "stopped":
        st.caption("⏹ " + t("chat.stopped"))
    if message.get("error") is not None:
        show_error(message["error"])
    if message.get("meta"):
        st.caption(message["meta"])


def meta_line(call: Call) -> str:
    """Model, tokens, time to first token, speed and cost of one reply."""
    usage, reply = call.usage or call.reply.estimate_usage(), call.reply
    parts = [call.model]
    tokens = t("meta.tokens", input=usage.input_tokens, output=usage.output_tokens)
    parts.append(tokens + (" " + t("meta.estimated") if usage.estimated else ""))
    if reply.ttft is not None:
        parts.append(t("meta.ttft", s=f"{reply.ttft:.2f}"))
    if reply.output_tokens_per_s:
        parts.append(t("meta.speed", v=f"{reply.output_tokens_per_s:.1f}"))
    if call.cost is None:
        parts.append(t("meta.cost_unknown"))
    else:
        parts.append(t("meta.free") if call.cost == 0 else f"${call.cost:.6f}")
    return " · ".join(parts)


def show_history(history: list[dict[str, Any]]) -> None:
    """Every message of the conversation; a reply still streaming goes on live where it is."""
    active = st.session_state.get(_ACTIVE)
    for message in history:
        if active is not None and message is active[1] and not active[0].finished:
            _follow(*active)
        else:
            show_message(message)


def stop_reply() -> None:
    """Stop the reply still streaming, if any: it keeps its partial answer (a new message
    replaces the stream rather than wait for it)."""
    active = st.session_state.get(_ACTIVE)
    if active is not None:
        stop_run(active[0])


def send(
    prompt: str,
    choice: Choice,
    params: Params,
    history: list[dict[str, Any]],
    *,
    user: str,
    system: str = "",
) -> None:
    """Send a prompt with the history before it; stream, meter and keep the reply."""
    if len(prompt) > MAX_MESSAGE_CHARS:
        st.warning(t("chat.too_long", n=f"{len(prompt):,}", limit=f"{MAX_MESSAGE_CHARS:,}"))
        return
    stop_reply()
    remember(user, choice)
    history.append({"role": "user", "content": prompt})
    show_message(history[-1])
    messages = [Message("system", system)] if system.strip() else []
    messages += [Message(m["role"], m["content"]) for m in history if m["content"]]
    reply: dict[str, Any] = {"role": "assistant", "content": "", "model": choice.model}
    call = Call(choice.endpoint, choice.model, messages, params, user_id=user, source="chat")
    run = Run([call], on_end=functools.partial(_settle, reply))
    # Registered before it starts: writing state is where a pending rerun takes effect, and
    # a run that went out must always be the one the next script run finds.
    st.session_state[_ACTIVE] = (run, reply)
    history.append(reply)  # kept even if the run is stopped mid-stream
    run.start()
    _follow(run, reply)


def _follow(run: Run, reply: dict[str, Any]) -> None:
    with st.chat_message("assistant"):
        show_run(run, [st.container()])
        show_outcome(reply)


def _settle(reply: dict[str, Any], call: Call) -> None:
    """The reply as it ended, kept in the conversation (on the run's worker thread, so a
    Stop or a rerun that ends the script run loses nothing)."""
    reply["content"], reply["reasoning"] = call.text, call.reasoning
    reply["status"] = call.status
    if call.error is not None:
        reply["error"] = call.error
    # A stopped answer was generated and billed: it shows its tokens and cost (estimated
    # where the server gave none). A call that failed before any answer has no such line.
    if call.text or call.status == "stopped":
        reply["meta"] = meta_line(call)
