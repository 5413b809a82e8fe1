"""The gate's rules without Streamlit: passwords, roles, slowed wrong tries, signed passes, and
the remember-me routes over real HTTP (Starlette's test client)."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from core import access, routes
from core.access import ADMIN, VISITOR, Passes, Passwords, Throttle, attempt, can

SECRET = "test-secret-0123456789"


class FakeClock:
    """Time that moves only when the test (or a held try) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


PASSWORDS = Passwords(visitor=("hunter2", "open sesame"), admin=("boss-Ω",))


# --- who may do what -------------------------------------------------------------------

@pytest.mark.parametrize("action", ["chat", "compare", "see_usage"])
def test_a_visitor_chats_compares_and_sees_usage(action):
    assert can(VISITOR, action) and can(ADMIN, action)


@pytest.mark.parametrize("action", sorted(access.ADMIN_ONLY))
def test_connections_prices_budget_and_urls_are_the_admins(action):
    assert can(ADMIN, action)
    assert not can(VISITOR, action)
    assert not can(None, action)


def test_the_admin_only_list_names_what_the_issue_names():
    assert {"add_connection", "test_connection", "pull_model", "edit_prices",
            "edit_budget", "see_connection_details"} <= access.ADMIN_ONLY


def test_an_unknown_action_is_a_bug_not_a_yes():
    with pytest.raises(ValueError):
        can(ADMIN, "delete_everything")


# --- passwords -------------------------------------------------------------------------

def test_passwords_come_from_the_environment_separated_by_commas():
    found = access.read_passwords({"APP_PASSWORD": " hunter2 , open sesame,,",
                                   "ADMIN_PASSWORD": "boss"}, {})
    assert found == Passwords(visitor=("hunter2", "open sesame"), admin=("boss",))
    assert found.gated


def test_secrets_win_and_a_list_there_may_hold_commas():
    found = access.read_passwords({"APP_PASSWORD": "from-env"},
                                  {"APP_PASSWORD": ["a,b", "c"]})
    assert found.visitor == ("a,b", "c")
    assert found.role_for("a,b") == VISITOR and found.role_for("from-env") is None


def test_nothing_set_is_an_open_deployment():
    found = access.read_passwords({"APP_PASSWORD": " , "}, {})
    assert not found.gated


@pytest.mark.parametrize("typed, role", [
    ("hunter2", VISITOR), ("open sesame", VISITOR), ("  hunter2 ", VISITOR), ("boss-Ω", ADMIN),
    ("hunter3", None), ("Hunter2", None), ("hunter", None), ("hunter22", None),
    ("", None), ("   ", None), ("x" * 10_240, None), ("hunter2" * 1500, None),
    ("\x00hunter2", None), ("密码", None),
])
def test_only_a_configured_password_opens(typed, role):
    assert PASSWORDS.role_for(typed) == role


def test_the_admin_password_wins_over_an_equal_visitor_one():
    assert Passwords(visitor=("same",), admin=("same",)).role_for("same") == ADMIN


def test_every_password_is_compared_in_constant_time(monkeypatch):
    """hmac.compare_digest on equal-length digests, once per configured password, even when
    the first one already matched: no early exit shows which one it was."""
    seen: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert PASSWORDS.role_for("hunter2") == VISITOR
    assert len(seen) == 3
    assert all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in seen)
    seen.clear()
    assert PASSWORDS.role_for("x" * 10_240) is None
    assert len(seen) == 3 and all(len(a) == 32 for a, _ in seen)


# --- slowed wrong tries ----------------------------------------------------------------

def test_a_hundred_wrong_tries_in_a_row_are_slowed_and_another_session_gets_in(clock):
    throttle = Throttle(clock)
    me = ["session:attacker"]
    results = [attempt(f"guess{i}", PASSWORDS, throttle, me, clock.sleep) for i in range(100)]
    checked = [r for r in results if r.checked]
    assert len(checked) == throttle.free  # then it must wait: the rest are not even checked
    assert all(r.role is None for r in results)
    assert results[-1].wait > 0 and not results[-1].checked
    # Even the right password is refused unchecked until the wait is over...
    assert attempt("hunter2", PASSWORDS, throttle, me, clock.sleep).role is None
    # ...while another session gets straight in.
    other = attempt("hunter2", PASSWORDS, throttle, ["session:someone"], clock.sleep)
    assert other.role == VISITOR and clock.slept == 0


def test_the_waits_grow_to_a_ceiling_and_the_right_password_works_after_one(clock):
    throttle = Throttle(clock, free=3, base=1.0, longest=60.0)
    me = ["session:slow"]
    waits = []
    for i in range(12):
        result = attempt(f"wrong{i}", PASSWORDS, throttle, me, clock.sleep)
        assert result.checked  # it waited each time, so each try was checked
        waits.append(result.wait)
        clock.now += result.wait
    assert waits[:5] == [0.0, 0.0, 1.0, 2.0, 4.0]
    assert waits == sorted(waits) and waits[-1] == 60.0
    clock.now += 60
    assert attempt("hunter2", PASSWORDS, throttle, me, clock.sleep).role == VISITOR
    assert throttle.wait(me) == 0  # a right password clears the slate


def test_an_address_is_slowed_only_after_more_tries_and_only_where_it_is_known(clock):
    throttle = Throttle(clock)
    shared = "address:203.0.113.7"
    for i in itertools.count():
        result = attempt("wrong", PASSWORDS, throttle, [f"session:{i}", shared], clock.sleep)
        if result.wait > 0:
            break
    assert i + 1 == throttle.free_for["address"]  # fresh sessions, one address
    assert not attempt("hunter2", PASSWORDS, throttle, ["session:new", shared]).checked
    assert attempt("hunter2", PASSWORDS, throttle, ["session:new"]).role == VISITOR
    assert attempt("hunter2", PASSWORDS, throttle,
                   ["session:new2", "address:198.51.100.1"]).role == VISITOR


def test_the_process_cap_slows_a_crowd_but_never_locks_out_the_right_password(clock):
    throttle = Throttle(clock, process_limit=60, window=60.0, pause=2.0)
    for i in range(5000):  # a crowd of fresh sessions, each wrong once
        attempt("wrong", PASSWORDS, throttle, [f"session:bot{i}"], clock.sleep)
        clock.now += 0.001
    assert throttle.pause() == 2.0
    before = clock.slept
    result = attempt("hunter2", PASSWORDS, throttle, ["session:owner"], clock.sleep)
    assert result.role == VISITOR
    assert clock.slept - before == 2.0  # held, not refused
    wrong = attempt("wrong", PASSWORDS, throttle, ["session:bot-last"], clock.sleep)
    assert wrong.checked  # the cap holds tries; it never stops checking them
    clock.now += 61
    assert throttle.pause() == 0.0  # a quiet minute later, no hold


def test_empty_tries_are_not_counted(clock):
    throttle = Throttle(clock)
    for _ in range(50):
        assert attempt("  ", PASSWORDS, throttle, ["session:x"]) == access.Attempt(
            None, checked=False)
    assert throttle.wait(["session:x"]) == 0


def test_the_throttle_keeps_a_bounded_memory(clock):
    throttle = Throttle(clock, max_keys=100, forget=3600)
    for i in range(1000):
        throttle.failed([f"session:{i}"])
    assert len(throttle._tallies) == 100
    clock.now += 3601
    throttle.failed(["session:late"])
    assert list(throttle._tallies) == ["session:late"]


# --- signed passes ---------------------------------------------------------------------

def test_a_pass_grants_its_role_while_its_password_is_configured():
    passes = Passes(SECRET)
    token = passes.issue(VISITOR, "hunter2", "session")
    assert passes.read(token, PASSWORDS, "session") == VISITOR
    assert "hunter2" not in token
    assert passes.read(token, Passwords(visitor=("changed",)), "session") is None
    admin = passes.issue(ADMIN, "boss-Ω", "cookie")
    assert passes.read(admin, PASSWORDS, "cookie") == ADMIN


@pytest.mark.parametrize("forged", [
    None, "", "admin", "visitor", "x" * 5000,
    Passes("another-secret").issue(ADMIN, "boss-Ω", "session"),
])
def test_a_forged_pass_grants_nothing(forged):
    assert Passes(SECRET).read(forged, PASSWORDS, "session") is None


def test_a_visitor_pass_cannot_be_turned_into_an_admin_one():
    passes = Passes(SECRET)
    token = passes.issue(VISITOR, "hunter2", "session")
    payload, _, signature = token.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["role"] = ADMIN
    tampered = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    assert passes.read(f"{tampered}.{signature}", PASSWORDS, "session") is None


def test_each_purpose_has_its_own_pass():
    passes = Passes(SECRET)
    ticket = passes.issue(VISITOR, "hunter2", "ticket")
    assert passes.read(ticket, PASSWORDS, "cookie") is None
    assert passes.read(ticket, PASSWORDS, "session") is None
    assert passes.read(ticket, PASSWORDS, "ticket") == VISITOR


def test_a_ticket_lasts_a_minute(monkeypatch):
    passes = Passes(SECRET)
    ticket = passes.issue(VISITOR, "hunter2", "ticket")
    real = access.time.time
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: real() + access.TICKET_S + 2)
    assert passes.read(ticket, PASSWORDS, "ticket") is None


# --- the remember-me routes ------------------------------------------------------------

@pytest.fixture
def client() -> TestClient:
    return TestClient(Starlette(routes=routes.routes(lambda: SECRET)))


def test_a_ticket_becomes_an_httponly_cookie(client):
    ticket = Passes(SECRET).issue(ADMIN, "boss-Ω", "ticket")
    reply = client.post(routes.REMEMBER_PATH, content=ticket)
    assert reply.status_code == 204
    header = reply.headers["set-cookie"]
    assert header.startswith(f"{routes.COOKIE}=")
    for part in ("HttpOnly", "SameSite=strict", f"Max-Age={access.REMEMBER_S}", "Path=/"):
        assert part in header
    assert "Secure" not in header  # plain http on a laptop
    cookie = reply.cookies[routes.COOKIE]
    assert Passes(SECRET).read(cookie, PASSWORDS, "cookie") == ADMIN
    assert Passes(SECRET).read(cookie, PASSWORDS, "ticket") is None


def test_behind_https_the_cookie_is_secure(client):
    ticket = Passes(SECRET).issue(VISITOR, "hunter2", "ticket")
    reply = client.post(routes.REMEMBER_PATH, content=ticket,
                        headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in reply.headers["set-cookie"]


@pytest.mark.parametrize("body", [
    "", "nonsense", Passes("other").issue(ADMIN, "boss-Ω", "ticket"),
    Passes(SECRET).issue(ADMIN, "boss-Ω", "cookie"), "x" * 100_000,
])
def test_no_cookie_without_a_genuine_ticket(client, body):
    reply = client.post(routes.REMEMBER_PATH, content=body)
    assert reply.status_code == 403 and "set-cookie" not in reply.headers


def test_the_routes_take_only_post(client):
    assert client.get(routes.REMEMBER_PATH).status_code == 405


def test_forget_drops_the_cookie(client):
    reply = client.post(routes.FORGET_PATH)
    assert reply.status_code == 204
    header = reply.headers["set-cookie"]
    assert header.startswith(f'{routes.COOKIE}="";') and "Max-Age=0" in header
