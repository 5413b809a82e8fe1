"""Keys typed in Settings live in that session only: their adapter is held by the session's
endpoint, never in the process-wide cache, and goes when the endpoint does."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import providers
from core.config import make_endpoint
from tests.conftest import API_KEY

ENTRY = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def test_a_session_endpoint_holds_its_own_adapter(openai_server):
    endpoint = make_endpoint("Typed", "custom", base_url=openai_server.url, api_key=API_KEY)
    assert endpoint.source == "session"
    before = providers._shared.cache_info()
    adapter = providers.provider_for(endpoint)
    assert providers.provider_for(endpoint) is adapter  # built once, its pool reused
    assert providers._shared.cache_info() == before  # the process-wide cache never saw it
    assert endpoint.held["provider"] is adapter
    assert API_KEY not in repr(endpoint)

    gone = weakref.ref(adapter)
    del adapter, endpoint
    gc.collect()
    assert gone() is None  # the session dropped its endpoint: the key is gone with it


def test_a_configured_endpoint_shares_one_adapter_across_sessions(openai_server):
    one = make_endpoint("Env", "custom", base_url=openai_server.url, api_key=API_KEY,
                        source="env")
    two = make_endpoint("Env", "custom", base_url=openai_server.url, api_key=API_KEY,
                        source="env")
    assert providers.provider_for(one) is providers.provider_for(two)
    assert not one.held


def test_a_key_added_in_settings_stays_in_that_session(db, openai_server):
    at = AppTest.from_file(ENTRY, default_timeout=30)
    at.session_state["language"] = "en"
    at.run()
    at.switch_page("app_pages/settings.py").run()
    before = providers._shared.cache_info().currsize
    at.text_input[0].set_value("Mine")
    at.text_input[1].set_value(openai_server.url)
    at.text_input[2].set_value(API_KEY)
    at.form_submit_button[-1].click().run()
    assert "Added “Mine”" in at.success[0].value
    [endpoint] = at.session_state["session_endpoints"]
    assert endpoint.held["provider"] is providers.provider_for(endpoint)
    assert providers._shared.cache_info().currsize == before

    other = AppTest.from_file(ENTRY, default_timeout=30)
    other.session_state["language"] = "en"
    other.run()
    other.switch_page("app_pages/settings.py").run()
    assert not other.dataframe  # another session does not see it
    assert "No model is connected yet" in other.info[0].value
