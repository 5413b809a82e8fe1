"""Who is using the app, in which language, and which endpoints their session can reach."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.config import ConfigError, Endpoint, load_endpoints, local_ollama, read_env
from core.i18n import LANGUAGES, language_from_locale, set_language, t

SESSION_ENDPOINTS = "session_endpoints"
OFF = ("0", "false", "no", "off")


def auth_configured() -> bool:
    """Whether people sign in with st.login (an [auth] section in the secrets)."""
    return bool(read_secrets().get("auth"))


def current_user() -> str:
    """The signed-in user's email on a shared deployment; "local" only when no auth is set up.

    Fails closed: with auth configured, an error or a user without an identity stops the
    page with a sentence; it never falls back to the shared "local" user's data.
    """
    if not auth_configured():
        return "local"
    try:
        if not st.user.is_logged_in:
            st.login()
            st.stop()
        user = st.user.get("email") or st.user.get("sub")
    except Exception:  # noqa: BLE001 - whatever broke, nobody gets another user's rows
        user = None
    if not user:
        st.error(t("auth.failed"), icon=":material/lock:")
        st.stop()
    return str(user)


def setup_language() -> str:
    """Pick the UI language: the sidebar choice, else the browser's, and use it for t()."""
    if "language" not in st.session_state:
        st.session_state.language = language_from_locale(st.context.locale)
    set_language(st.session_state.language)
    return st.session_state.language


def language_switch() -> None:
    """The sidebar's language selector."""
    st.sidebar.selectbox(
        t("sidebar.language"),
        options=list(LANGUAGES),
        format_func=LANGUAGES.__getitem__,
        key="language",
    )


def read_secrets() -> dict[str, Any]:
    """The deployment's Streamlit secrets as a dict; empty when there are none."""
    try:
        return st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets.toml is a normal laptop setup
        return {}


@st.cache_data(ttl=30, show_spinner=False)
def _default_ollama() -> Endpoint | None:
    return local_ollama()


def autodetect_ollama(env: dict[str, str]) -> bool:
    """Whether to look for an Ollama at the default host: OWNGPT_AUTODETECT_OLLAMA=0 says no.

    The tests turn it off, so an Ollama running on the developer's machine cannot change them.
    """
    return env.get("OWNGPT_AUTODETECT_OLLAMA", "1").strip().lower() not in OFF


def endpoints() -> tuple[list[Endpoint], list[ConfigError]]:
    """Configured endpoints, then the session's own (an admin's only), then an Ollama found at
    the default host."""
    from core.ui.gate import allowed  # the gate reads the secrets through this module

    env = read_env()
    found, problems = load_endpoints(env, read_secrets())
    names = {e.name for e in found}
    # A visitor cannot add a connection; one planted in the session state is not used either.
    own = st.session_state.get(SESSION_ENDPOINTS, []) if allowed("add_connection") else []
    for endpoint in own:
        if endpoint.name not in names:
            found.append(endpoint)
            names.add(endpoint.name)
    if (autodetect_ollama(env) and not env.get("OLLAMA_HOST")
            and not any(e.kind == "ollama" for e in found)):
        auto = _default_ollama()
        if auto is not None:
            found.append(auto)
    return found, problems


def add_session_endpoint(endpoint: Endpoint) -> None:
    """Keep an endpoint (and its key) in this session's memory only; an admin's action."""
    from core.ui.gate import require

    require("add_connection")
    kept = [e for e in st.session_state.get(SESSION_ENDPOINTS, []) if e.name != endpoint.name]
    st.session_state[SESSION_ENDPOINTS] = [*kept, endpoint]


def remove_session_endpoint(name: str) -> None:
    """Forget a session endpoint and its key."""
    kept = [e for e in st.session_state.get(SESSION_ENDPOINTS, []) if e.name != name]
    st.session_state[SESSION_ENDPOINTS] = kept
