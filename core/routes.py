"""Two public routes beside Streamlit's, for remember-me: a browser trades the one-minute
ticket its signed-in session gave it for an HttpOnly cookie, and drops the cookie on sign out.

A Streamlit script cannot set a cookie (`st.context.cookies` is read-only), so `app.py` serves
these through `st.App(..., routes=...)`; the password itself is only ever checked in the
script (`core.ui.gate`), slowed there. No streamlit here: `secret` comes from the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.access import REMEMBER_S, Passes

COOKIE = "owngpt_pass"
REMEMBER_PATH = "/owngpt/remember"
FORGET_PATH = "/owngpt/forget"
SERVED_ENV = "OWNGPT_ROUTES"  # set by app.py: the script may offer remember-me
MAX_BODY = 4096  # a ticket is a few hundred bytes


def served(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process serves the routes (started from app.py, not streamlit_app.py)."""
    return env.get(SERVED_ENV) == "1"


def routes(secret: Callable[[], str]) -> list[Route]:
    """The remember and forget routes; `secret` gives the key passes are signed with."""

    async def remember(request: Request) -> Response:
        ticket = await _small_body(request)
        passes = Passes(secret())
        body = passes.verify(ticket, "ticket") if ticket is not None else None
        if body is None or not {"role", "fp"} <= body.keys():
            return Response(status_code=403)
        response = Response(status_code=204)
        response.set_cookie(COOKIE, passes.reissue(body, "cookie"), max_age=REMEMBER_S,
                            path="/", httponly=True, samesite="strict",
                            secure=_https(request))
        return response

    async def forget(request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=_https(request))
        return response

    return [Route(REMEMBER_PATH, remember, methods=["POST"]),
            Route(FORGET_PATH, forget, methods=["POST"])]


async def _small_body(request: Request) -> str | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body.decode("ascii", errors="replace").strip()


def _https(request: Request) -> bool:
    # Behind a TLS-ending proxy (Community Cloud, nginx) the app itself sees plain http.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
    return request.url.scheme == "https" or forwarded == "https"
