"""How failures look: one sentence that says what to do, the server's words beneath it.

A `ProviderError` is data (kind, hint, model, URL, the server's words, status, request id);
its sentence is built here, where it is shown, for the one who reads it:

- every URL is shown without `user:pass@` (`config.mask_url`), and to a visitor of a gated
  deployment not at all (`gate.shown_url`);
- the server's words are quoted only when `quote` (a connection test shows a status and a
  sentence, never what the address returned), and they are only ever an API's JSON error
  message (`providers.base.server_words`);
- a pane of a blind comparison, until the vote, says only what failed, in neutral words: no
  model, no URL, no server quote, no request id (`neutral`);
- the whole text goes through the renderer: a model's name or a server's words written as
  Markdown can format, never fetch or link out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from core.config import ConfigError, mask_url
from core.i18n import t
from core.providers import ProviderError
from core.ui.gate import allowed, shown_url
from core.ui.render import markdown

KINDS = ("auth", "model_not_found", "rate_limited", "context_too_long", "connection", "timeout",
         "server", "bad_request", "content_filter", "budget", "config")


def describe(hint: str, context: Mapping[str, Any], *, detail: str = "",
             http_status: int | None = None, request_id: str | None = None,
             quote: bool = True) -> str:
    """The sentence of an error (catalog key `hint`, its placeholders from `context`), then
    the server's words and the facts a provider's support asks for; Markdown, not yet safe."""
    values = {"model": "?", "url": "?", "retry_after": "?", **context}
    url = mask_url(str(values["url"] or "?"))
    values["url"] = shown_url(url)
    body = t(hint, **values)
    if quote and detail:
        detail = mask_url(detail)
        detail = detail.replace(url, values["url"]) if url != "?" else detail
        body += "\n\n" + t("error.server_said", detail=detail)
    facts = []
    if http_status:
        facts.append(t("error.status", status=http_status))
    if request_id:
        facts.append(t("error.request_id", request_id=request_id))
    if facts:
        body += "\n\n" + " · ".join(facts)
    return body


def neutral(kind: str | None) -> str:
    """What failed, and nothing that tells which model or server it was."""
    what = kind if kind in KINDS else "server"
    return t("error.blind", what=t(f"error.what.{what}"))


def show_error(err: ProviderError, target: Any = None, *, quote: bool = True,
               blind: bool = False) -> None:
    """An error banner: what to do, and what the server said (see the module's rules)."""
    where = target or st
    if blind:
        where.error(markdown(neutral(err.kind.value)), icon=":material/error:")
        return
    body = describe(err.hint, err.context, detail=err.detail, http_status=err.http_status,
                    request_id=err.request_id, quote=quote)
    where.error(markdown(body), icon=":material/error:")


def show_saved_error(hint: str | None, model: str | None, url: str,
                     row: Mapping[str, Any] | None, target: Any = None) -> None:
    """An error read back from a saved message and its call-log row, built at draw time in
    the reader's language."""
    row = row or {}
    body = describe(f"error.{hint or 'unexpected'}", {"model": model or "?", "url": url},
                    detail=(row.get("error_detail") or "")[:500],
                    http_status=row.get("http_status"), request_id=row.get("request_id"))
    (target or st).error(markdown(body), icon=":material/error:")


def show_blind_error(kind: str | None, target: Any = None) -> None:
    """A failed pane of a blind comparison before the vote."""
    (target or st).error(markdown(neutral(kind)), icon=":material/error:")


def show_config_error(err: ConfigError) -> None:
    """A configuration problem, in the user's language (a URL in it without credentials); a
    visitor only learns there is one."""
    if not allowed("see_connection_details"):
        st.warning(t("gate.config_problem"), icon=":material/settings_alert:")
        return
    context = {k: mask_url(v) if isinstance(v, str) else v for k, v in err.context.items()}
    st.warning(markdown(t(err.key, **context)), icon=":material/settings_alert:")
