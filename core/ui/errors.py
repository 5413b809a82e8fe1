"""How failures look: one sentence that says what to do, the server's words beneath it."""

from __future__ import annotations

import streamlit as st

from core.config import ConfigError
from core.i18n import t
from core.providers import ProviderError
from core.ui.gate import allowed, shown_url


def show_error(err: ProviderError, target: st.delta_generator.DeltaGenerator | None = None) -> None:
    """An error banner: what to do, and what the server said."""
    where = target or st
    url = str(err.context.get("url", ""))
    body = t(err.hint, **{**err.context, "url": shown_url(url)})
    if err.detail:
        detail = err.detail.replace(url, shown_url(url)) if url else err.detail
        body += "\n\n" + t("error.server_said", detail=detail[:500])
    facts = []
    if err.http_status:
        facts.append(t("error.status", status=err.http_status))
    if err.request_id:
        facts.append(t("error.request_id", request_id=err.request_id))
    if facts:  # what a provider's support asks for
        body += "\n\n" + " · ".join(facts)
    where.error(body, icon=":material/error:")


def show_config_error(err: ConfigError) -> None:
    """A configuration problem, in the user's language; a visitor only learns there is one."""
    if not allowed("see_connection_details"):
        st.warning(t("gate.config_problem"), icon=":material/settings_alert:")
        return
    st.warning(t(err.key, **err.context), icon=":material/settings_alert:")
