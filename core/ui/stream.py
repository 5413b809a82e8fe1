"""Streaming a metered call onto the screen without the script falling behind the model.

A worker thread reads the stream into a queue; the script thread draws at most every 50 ms
(`st.write_stream` resends the whole text per chunk, quadratic in the answer) and touches
session state while it waits, so a click on Stop lands within ~0.1 s even before the first
token. The worker never calls st.*.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.i18n import t
from core.metering import Call
from core.providers import ProviderError

log = logging.getLogger(__name__)
FRAME_S = 0.05
_END = object()


def stream_into(call: Call, message: dict[str, Any]) -> None:
    """Draw the call's answer in the current container as it streams.

    `message` is a plain dict already in the conversation: its content is kept up to date, so
    a stop (which ends this script run at the next st.* call) still leaves the partial answer.
    """
    events: queue.Queue[object] = queue.Queue()
    ctx = get_script_run_ctx()
    session_id = ctx.session_id if ctx else None

    def read() -> None:
        try:
            for delta in call:
                events.put(delta)
        except ProviderError:
            pass  # on call.error, and in the log
        finally:
            events.put(_END)

    threading.Thread(target=read, name="owngpt-stream", daemon=True).start()
    thinking = st.empty()
    answer = st.empty()
    answer.markdown(f":gray[{t('chat.waiting')}]")
    drawn, last_draw, ended = 0, 0.0, False
    try:
        while not ended:
            try:
                item = events.get(timeout=FRAME_S)
            except queue.Empty:
                item = None
                st.session_state.get("_stream_tick")  # lets a pending Stop take effect
            while isinstance(item, str):  # take all that is waiting, draw once
                try:
                    item = events.get_nowait()
                except queue.Empty:
                    item = None
            ended = item is _END
            now = time.perf_counter()
            if ended or now - last_draw >= FRAME_S:
                reply = call.reply
                message["content"], message["reasoning"] = reply.text, reply.reasoning
                if reply.reasoning:
                    _draw_reasoning(thinking, reply.reasoning, done=bool(reply.text) or ended)
                if len(reply.text) != drawn or ended:
                    answer.markdown(reply.text + ("" if ended else " ▌"))
                    drawn, last_draw = len(reply.text), now
    finally:
        message["content"], message["reasoning"] = call.reply.text, call.reply.reasoning
        message["status"] = "stopped" if not ended else call.status
        if not ended:  # Stop, or the page went away: end the stream and keep what came
            call.stop()
            _redraw_after_stop(session_id)


def _redraw_after_stop(session_id: str | None) -> None:
    """Rerun the page once the stopped run is over, so it shows the kept partial answer.

    A Stop ends the script where it is and nothing redraws the screen: it would keep the
    streaming cursor. Streamlit has no public call for this; the session's own rerun request
    is scheduled on the server's event loop, and where that is unavailable (AppTest) the
    next interaction redraws instead.
    """
    if session_id is None or not Runtime.exists():
        return

    def rerun() -> None:
        try:
            runtime = Runtime.instance()
            info = runtime._session_mgr.get_active_session_info(session_id)
            if info is not None:
                runtime._get_async_objs().eventloop.call_soon_threadsafe(
                    info.session.request_rerun, None)
        except Exception:  # the next interaction redraws anyway
            log.debug("could not redraw after stop", exc_info=True)

    threading.Timer(0.3, rerun).start()


def _draw_reasoning(slot: Any, reasoning: str, *, done: bool) -> None:
    label = t("chat.thought") if done else t("chat.thinking")
    with slot.container(), st.expander(label, expanded=not done, icon=":material/psychology:"):
        st.markdown(reasoning)
