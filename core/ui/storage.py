"""The sentence at the top of the app when the configured database cannot be used."""

from __future__ import annotations

import streamlit as st

from core import store
from core.i18n import t


def database_banner() -> None:
    """Open the database once; if it failed, say so (the app runs on memory, the log is lost).

    Never shows the URL: it may carry a password.
    """
    store.engine()
    problem = store.problem()
    if problem is not None:
        st.warning(t(f"db.{problem}"), icon=":material/database:")
