"""The gate, drawn: the password box every address shows first, sign out, admin sign-in.

`gate()` is called once, in streamlit_app.py, before `st.navigation`: a run that is not signed
in stops at the password box, so no page (and no new page) runs for a stranger. The rules are
in `core.access`; this module keeps a session's signed pass and, when the app was started from
app.py, trades it for a remember-me cookie through `core.routes`.
"""

from __future__ import annotations

import json
import math
import secrets
from urllib.parse import urlparse

import streamlit as st

from core import access, routes
from core.access import ADMIN, VISITOR, Passwords, Role
from core.config import read_env
from core.i18n import t
from core.ui.session import auth_configured, current_user, language_switch, read_secrets

PASS = "gate_pass"  # the session's signed pass (forging it gives nothing: it is signed)
TICKET = "gate_ticket"  # for the next run to trade for a cookie
REMEMBER = "gate_remember"  # this session chose remember-me
SIGNED_OUT = "gate_signed_out"  # ignore the cookie this session arrived with
FORGET = "gate_forget"  # drop the cookie on the next run
LOGOUT = "gate_logout"  # end the st.login session on the next run
WANTED = "gate_wanted"  # the address first asked for: page path and query (?c=...)
SESSION_ID = "gate_session"
KEEP_ON_SIGN_OUT = ("language",)
MAX_CHARS = 1024


def passwords() -> Passwords:
    """The deployment's passwords, read afresh (a change takes effect on the next run)."""
    return access.read_passwords(read_env(), read_secrets())


def _has_door(found: Passwords, auth: bool) -> bool:
    # ADMIN_PASSWORD alone closes the door to all but the admin; with st.login as the door it
    # only lets a signed-in person become the admin (in Settings).
    return bool(found.visitor) or (bool(found.admin) and not auth)


def _passes() -> access.Passes:
    return access.Passes(st.get_option("server.cookieSecret"))


@st.cache_resource(show_spinner=False)
def _throttle() -> access.Throttle:
    """One per process: wrong tries from every session count here."""
    return access.Throttle()


def _keys() -> list[str]:
    """What a wrong try is counted against: this session, and its address when Streamlit
    knows it (it is None on loopback and behind a proxy on the same host)."""
    session = st.session_state.setdefault(SESSION_ID, secrets.token_hex(8))
    keys = [f"session:{session}"]
    if st.context.ip_address is not None:
        keys.append(f"address:{st.context.ip_address}")
    return keys


def role() -> Role | None:
    """The viewer's role on this run: admin when the deployment is open, else what the
    session's pass grants (a visitor signed in through st.login alone), else None."""
    found, auth = passwords(), auth_configured()
    if not found.gated and not auth:
        return ADMIN
    granted = _passes().read(st.session_state.get(PASS), found, "session")
    if granted is None and auth and not _has_door(found, auth):
        return VISITOR
    return granted


def allowed(action: str) -> bool:
    """Whether the viewer may do `action` (see `core.access.can`)."""
    return access.can(role(), action)


def shown_url(url: str) -> str:
    """A server's URL as this viewer may see it: a visitor is only told "the server"."""
    return url if allowed("see_connection_details") else t("gate.hidden_url")


def require(action: str) -> None:
    """Refuse, and end the run, unless the viewer may do `action`: called where it happens."""
    if not allowed(action):
        st.error(t("gate.refused"), icon=":material/block:")
        st.stop()


def gate() -> Role:
    """Stop the run at the password box until this session is signed in; the viewer's role."""
    if st.session_state.pop(LOGOUT, False):
        st.logout()
    found, auth = passwords(), auth_configured()
    if not found.gated and not auth:
        return ADMIN
    granted = _passes().read(st.session_state.get(PASS), found, "session")
    if granted is None and _has_door(found, auth):
        granted = _from_cookie(found)
    if granted is None and _has_door(found, auth):
        if st.session_state.pop(FORGET, False):
            _post(routes.FORGET_PATH, "")
        st.session_state.setdefault(WANTED, _address())
        _password_box(found)
        st.stop()
    if auth:
        current_user()  # st.login: stops the run until the person has signed in
    ticket = st.session_state.pop(TICKET, None)
    if ticket:
        _post(routes.REMEMBER_PATH, ticket)
    return granted or VISITOR


def _address() -> tuple[str | None, dict[str, str]]:
    """The page path (relative to the app's root; None when the browser did not say) and the
    query this run was asked for."""
    if st.context.url is None:
        return None, {k: st.query_params[k] for k in st.query_params}
    path = urlparse(st.context.url).path.strip("/")
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].strip("/")
    return path, {k: st.query_params[k] for k in st.query_params}


def return_to_address(pages: list[st.Page], current: st.Page) -> None:
    """Just signed in: open the address the person first asked for (/settings, /?c=<id>),
    which the password box's runs could not keep."""
    wanted = st.session_state.pop(WANTED, None)
    if wanted is None:
        return
    path, query = wanted
    target = next((p for p in pages if path is not None and p.url_path == path), current)
    if target is current and query == {k: st.query_params[k] for k in st.query_params}:
        return
    st.switch_page(target, query_params=query)


def _from_cookie(found: Passwords) -> Role | None:
    """The role a remember-me cookie grants, moved into the session's own pass."""
    if st.session_state.get(SIGNED_OUT):
        return None  # the cookie this session arrived with was dropped at sign out
    token = st.context.cookies.get(routes.COOKIE)
    passes = _passes()
    granted = passes.read(token, found, "cookie")
    body = passes.verify(token, "cookie")
    if granted is None or body is None:
        return None
    st.session_state[PASS] = passes.reissue(body, "session")
    st.session_state[REMEMBER] = True
    return granted


def _password_box(found: Passwords) -> None:
    language_switch()
    st.title(t("gate.title"))
    with st.form("gate_form", clear_on_submit=True):
        typed = st.text_input(t("gate.password"), type="password", max_chars=MAX_CHARS,
                              key="gate_password")
        remember = routes.served() and st.checkbox(t("gate.remember"), value=True,
                                                   key="gate_remember_box",
                                                   help=t("gate.remember_help"))
        sent = st.form_submit_button(t("gate.sign_in"), type="primary", icon=":material/login:")
    if sent and _try(typed, found, remember=bool(remember)):
        st.rerun()


def _try(typed: str, found: Passwords, *, remember: bool) -> bool:
    """Check a typed password; on success the session is signed in, else say why not."""
    result = access.attempt(typed, found, _throttle(), _keys())
    if result.role is not None:
        passes = _passes()
        st.session_state[PASS] = passes.issue(result.role, typed, "session")
        st.session_state.pop(SIGNED_OUT, None)
        if remember:
            st.session_state[REMEMBER] = True
        if st.session_state.get(REMEMBER) and routes.served():
            st.session_state[TICKET] = passes.issue(result.role, typed, "ticket")
        return True
    wait = str(math.ceil(result.wait))
    if not result.checked and result.wait <= 0:
        st.warning(t("gate.empty"), icon=":material/password:")
    elif not result.checked:
        st.error(t("gate.too_soon", s=wait), icon=":material/hourglass_top:")
    elif result.wait > 0:
        st.error(t("gate.wrong") + " " + t("gate.wait", s=wait), icon=":material/lock:")
    else:
        st.error(t("gate.wrong"), icon=":material/lock:")
    return False


def account(viewer: Role) -> None:
    """Who is signed in, and sign out, in the sidebar; nothing on an open deployment."""
    found, auth = passwords(), auth_configured()
    if not found.gated and not auth:
        return
    st.sidebar.caption(t("gate.as_admin" if viewer == ADMIN else "gate.as_visitor"))
    st.sidebar.button(t("gate.sign_out"), key="gate_sign_out", icon=":material/logout:",
                      on_click=_sign_out, args=(auth,))


def _sign_out(auth: bool) -> None:
    """Forget everything this session held (its pass, typed keys, open conversation)."""
    for key in list(st.session_state):
        if key not in KEEP_ON_SIGN_OUT:
            del st.session_state[key]
    st.session_state[SIGNED_OUT] = True
    st.session_state[FORGET] = True
    if auth:
        st.session_state[LOGOUT] = True


def admin_sign_in() -> None:
    """For a visitor in Settings: sign in as the admin with ADMIN_PASSWORD, or be told there
    is no admin on this deployment."""
    found = passwords()
    if not found.admin:
        st.info(t("gate.no_admin"), icon=":material/admin_panel_settings:")
        return
    st.info(t("gate.admin_only"), icon=":material/admin_panel_settings:")
    with st.form("gate_admin_form", clear_on_submit=True):
        typed = st.text_input(t("gate.admin_password"), type="password", max_chars=MAX_CHARS,
                              key="gate_admin_password")
        sent = st.form_submit_button(t("gate.admin_sign_in"), icon=":material/key:")
    if not sent:
        return
    admin_only = Passwords(admin=found.admin)  # a visitor password does not count here
    if _try(typed, admin_only, remember=False):
        st.rerun()


def _post(path: str, body: str) -> None:
    """Have the browser POST to one of app.py's routes (its reply sets or drops the cookie)."""
    script = (f"<script>fetch({json.dumps(path)}, {{method: 'POST', body: {json.dumps(body)}, "
              "credentials: 'same-origin'});</script>")
    st.html(script, unsafe_allow_javascript=True, width="content")
