"""The call log, once per app process: calls a dead process left running are settled."""

from __future__ import annotations

import logging

import streamlit as st

from core.metering import mark_interrupted
from core.ui.session import endpoints

log = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False)
def mark_interrupted_calls() -> int:
    """Mark the calls a killed process left running as interrupted, once per process (the
    usage page calls `core.metering.mark_interrupted` itself each time it is drawn).

    A database that cannot be reached must not keep the app from chatting: it is logged.
    """
    try:
        return mark_interrupted(endpoints=endpoints()[0])  # their pricing modes apply
    except Exception:  # the store reports its own problems where they matter
        log.warning("could not mark interrupted calls", exc_info=True)
        return 0
