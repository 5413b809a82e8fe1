"""Metered calls streaming onto the screen: one placeholder per call, one Stop for all.

The calls run on the call loop (`core.runner.Run`); the script thread only reads their text
and redraws each at most every 50 ms (`st.write_stream` resends the whole text per chunk,
quadratic in the answer: see STREAMLIT-NOTES). Stop is an ordinary button: its callback stops
the run at the start of the rerun its click triggers, so that very rerun repaints the kept
partial answers, and nothing is left scheduled to land on the user's next message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from core.i18n import t
from core.metering import Call
from core.runner import Run
from core.ui.render import LiveMarkdown

FRAME_S = 0.05
# How long the Stop click's rerun waits for the calls to settle (they take milliseconds).
SETTLE_S = 1.0


def show_run(run: Run, slots: Sequence[Any], *, stop_slot: Any | None = None) -> None:
    """Draw each call of a started run into its slot (one container per call, in order),
    with one Stop button for all (in `stop_slot`, default: the current position), until
    every call has ended and its on_end has returned.

    Any rerun (a Stop click, a new message, a widget) ends this script run at the next frame
    while the calls go on; the next script run can show the same run again with this function.
    """
    panes = [_Pane(slot) for slot in slots]
    stop = (stop_slot or st).empty()
    if not run.finished:
        stop.button(t("run.stop"), key=f"owngpt_stop_{id(run):x}", icon=":material/stop_circle:",
                    on_click=stop_run, args=(run,))
    while True:
        finished = run.wait(FRAME_S)
        for pane, call in zip(panes, run.calls, strict=True):
            pane.draw(call, finished)
        if finished:
            break
        # Reading state is a point where a pending rerun takes effect, as the drawing above
        # is not while the first token is still coming: a Stop click lands within a frame.
        st.session_state.get("owngpt_frame")
    stop.empty()


def stop_run(run: Run) -> None:
    """Stop every call of a run and wait for them to settle (a Stop button's callback)."""
    run.stop()
    run.wait(SETTLE_S)


class _Pane:
    """One call's place on screen: its reasoning (folded once the answer starts) and answer."""

    def __init__(self, slot: Any) -> None:
        with slot:
            self.thinking = st.empty()
            self.answer = st.empty()
        self.answer.markdown(f":gray[{t('chat.waiting')}]")
        self.drawn = 0  # characters on screen; -1 once the final answer is drawn
        self.thought: tuple[int, bool] = (0, False)
        # Model text is drawn only through the renderer; each keeps what it parsed last frame.
        self.safe_answer, self.safe_reasoning = LiveMarkdown(), LiveMarkdown()

    def draw(self, call: Call, finished: bool) -> None:
        text, reasoning = call.text, call.reasoning
        done = finished or call.ended  # a pane whose call ended loses its cursor at once
        thought = (len(reasoning), bool(text) or done)
        if reasoning and thought != self.thought:
            _draw_reasoning(self.thinking, self.safe_reasoning(reasoning), done=thought[1])
            self.thought = thought
        if done:
            if self.drawn != -1:
                if text:
                    self.answer.markdown(self.safe_answer(text))
                else:
                    self.answer.empty()
                self.drawn = -1
        elif len(text) != self.drawn:
            self.answer.markdown(self.safe_answer(text) + " ▌")
            self.drawn = len(text)


def _draw_reasoning(slot: Any, reasoning: str, *, done: bool) -> None:
    """The reasoning, already made safe by the renderer, in its expander."""
    label = t("chat.thought") if done else t("chat.thinking")
    with slot.container(), st.expander(label, expanded=not done, icon=":material/psychology:"):
        st.markdown(reasoning)
