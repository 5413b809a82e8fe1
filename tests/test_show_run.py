"""show_run: N calls of one run, each drawn into its own slot, one Stop for all."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.conftest import API_KEY
from tests.timing import WAIT_S


def panes(url: str, key: str, models: list[str]) -> None:
    """A page with one column per model, as the compare page draws it."""
    import streamlit as st

    from core.config import make_endpoint
    from core.metering import Call
    from core.providers import Message
    from core.runner import Run
    from core.ui import show_run

    if "run" not in st.session_state:
        endpoint = make_endpoint("Fake", "custom", base_url=url, api_key=key, source="env")
        st.session_state.run = Run([Call(endpoint, m, [Message("user", f"Pane {i}")],
                                         user_id="ana", source="compare")
                                    for i, m in enumerate(models)]).start()
    columns = st.columns(len(models))
    show_run(st.session_state.run, [c.container() for c in columns])
    st.write("statuses: " + " ".join(c.status for c in st.session_state.run.calls))


def test_each_call_is_drawn_in_its_own_pane_until_all_have_ended(db, openai_server):
    at = AppTest.from_function(panes, args=(openai_server.url, API_KEY,
                                            ["gpt-4o-mini", "fault-slow", "fault-500"]),
                               default_timeout=WAIT_S).run()
    texts = [m.value for m in at.markdown]
    assert any(t.startswith("Echo: Pane 0") and "▌" not in t for t in texts)
    assert any(t.startswith("Echo: Pane 1") and "▌" not in t for t in texts)
    assert not any(t.startswith("Echo: Pane 2") for t in texts)  # the failed one has no text
    assert "statuses: ok ok error" in texts
    assert len(at.button) == 0  # the Stop button goes once the run has finished

