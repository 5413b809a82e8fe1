"""Who may use a deployment and what they may do: passwords, roles, slowed wrong tries, passes.

A deployment is gated when `APP_PASSWORD` or `ADMIN_PASSWORD` is set (Streamlit secrets win
over the environment, so a list can be given there). The right `APP_PASSWORD` makes a visitor,
the right `ADMIN_PASSWORD` an admin; ungated, on a laptop, whoever runs the app is the admin.

Nothing here imports streamlit: `core/ui/gate.py` draws the password box and keeps a session's
pass, and `core/routes.py` turns a pass into a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer

Role = Literal["admin", "visitor"]
ADMIN: Role = "admin"
VISITOR: Role = "visitor"

# What only an admin may do on a gated deployment; anything else (chat, compare, see one's
# usage) a visitor may do too. Full base URLs and keys count: they tell where the money is.
ADMIN_ONLY = frozenset({
    "add_connection",
    "test_connection",
    "pull_model",
    "edit_prices",
    "edit_budget",
    "see_connection_details",
})
ACTIONS = ADMIN_ONLY | {"chat", "compare", "see_usage"}

Clock = Callable[[], float]


def can(role: Role | None, action: str) -> bool:
    """Whether `role` may do `action`; nobody (None) may do anything. Unknown actions raise."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if role is None:
        return False
    return role == ADMIN or action not in ADMIN_ONLY


@dataclass(frozen=True)
class Passwords:
    """The passwords that open a deployment: any visitor one, any admin one."""

    visitor: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    @property
    def gated(self) -> bool:
        """Whether anyone must type a password before the app shows anything."""
        return bool(self.visitor or self.admin)

    def role_for(self, typed: str) -> Role | None:
        """The role the typed password opens, else None.

        Every configured password is compared, each in constant time over SHA-256 digests (so
        neither the content nor the length of a password shows in the timing); an admin
        password wins over an equal visitor one.
        """
        typed = typed.strip()
        if not typed:
            return None
        digest = _digest(typed)
        admin = _any_equal(digest, self.admin)
        visitor = _any_equal(digest, self.visitor)
        if admin:
            return ADMIN
        return VISITOR if visitor else None

    def all(self, role: Role) -> tuple[str, ...]:
        """The passwords that open `role`."""
        return self.admin if role == ADMIN else self.visitor


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _any_equal(digest: bytes, candidates: Iterable[str]) -> bool:
    found = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        found |= hmac.compare_digest(digest, _digest(candidate))
    return found


def split_passwords(value: Any) -> tuple[str, ...]:
    """Passwords from one setting: a TOML list (each item as it is), or a string with commas
    between passwords. Surrounding spaces go; empty entries are ignored."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(s for s in (str(i).strip() for i in items) if s)


def read_passwords(env: Mapping[str, str], secrets: Mapping[str, Any]) -> Passwords:
    """`APP_PASSWORD` and `ADMIN_PASSWORD` from Streamlit secrets, else the environment."""

    def setting(name: str) -> tuple[str, ...]:
        return split_passwords(secrets[name] if name in secrets else env.get(name))

    return Passwords(visitor=setting("APP_PASSWORD"), admin=setting("ADMIN_PASSWORD"))


@dataclass
class _Tally:
    failures: int = 0
    until: float = 0.0  # no try before this instant
    seen: float = 0.0


class Throttle:
    """Slows wrong passwords down; never keeps a right one out for long.

    Each key ("session:<id>", "address:<ip>") may be wrong `free` times (an address, which
    several people may share, `free_for["address"]` times); after that each wrong try
    makes it wait `base * 2**k` seconds (at most `longest`) before it may try again, and a
    right password clears its keys. A key is forgotten after `forget` quiet seconds, and at
    most `max_keys` are kept (the oldest go first).

    Fresh sessions escape the per-key waits, so the whole process counts wrong tries too: when
    more than `process_limit` came in the last `window` seconds, every try is held `pause`
    seconds before it is checked. That slows a crowd without refusing anyone: a right password
    still gets in, `pause` seconds later.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        free: int = 5,
        free_for: Mapping[str, int] | None = None,
        base: float = 1.0,
        longest: float = 60.0,
        forget: float = 3600.0,
        max_keys: int = 10_000,
        process_limit: int = 60,
        window: float = 60.0,
        pause: float = 2.0,
    ) -> None:
        self.clock = clock
        self.free, self.base, self.longest = free, base, longest
        self.free_for = dict(free_for if free_for is not None else {"address": 20})
        self.forget, self.max_keys = forget, max_keys
        self.window, self.hold = window, pause
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()
        self._recent: deque[float] = deque(maxlen=process_limit)  # the latest wrong tries
        self._lock = threading.Lock()

    def wait(self, keys: Sequence[str]) -> float:
        """Seconds before these keys may try again (0: now)."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            tallies = [self._tallies[k] for k in keys if k in self._tallies]
            return max([t.until - now for t in tallies] + [0.0])

    def pause(self) -> float:
        """Seconds to hold the next try before checking it: 0 unless the process is busy
        with wrong passwords."""
        with self._lock:
            recent = self._recent
            busy = len(recent) == recent.maxlen and recent[0] > self.clock() - self.window
            return self.hold if busy else 0.0

    def failed(self, keys: Sequence[str]) -> float:
        """Count a wrong try against each key; the seconds before the next may be made."""
        with self._lock:
            now = self.clock()
            self._recent.append(now)
            wait = 0.0
            for key in keys:
                tally = self._tallies.pop(key, None) or _Tally()
                tally.failures += 1
                tally.seen = now
                over = tally.failures - self.free_for.get(key.split(":", 1)[0], self.free)
                if over >= 0:
                    tally.until = now + min(self.longest, self.base * 2 ** min(over, 32))
                    wait = max(wait, tally.until - now)
                self._tallies[key] = tally  # most recently seen last
            self._prune(now)
            return wait

    def passed(self, keys: Sequence[str]) -> None:
        """A right password: these keys start afresh."""
        with self._lock:
            for key in keys:
                self._tallies.pop(key, None)

    def _prune(self, now: float) -> None:
        tallies = self._tallies
        while tallies:
            key, oldest = next(iter(tallies.items()))
            if len(tallies) <= self.max_keys and oldest.seen > now - self.forget:
                break
            del tallies[key]


@dataclass(frozen=True)
class Attempt:
    """The answer to one typed password.

    `role` is set when it opened the deployment. Otherwise `checked` says whether it was
    compared at all (not when it came too soon, or was empty) and `wait` how many seconds
    the next try must wait.
    """

    role: Role | None
    checked: bool = True
    wait: float = 0.0


def attempt(
    typed: str,
    passwords: Passwords,
    throttle: Throttle,
    keys: Sequence[str],
    sleep: Callable[[float], None] = time.sleep,
) -> Attempt:
    """Check one typed password for the holders of `keys` (a session, an address), slowed as
    `Throttle` says: a try that comes too soon is refused unchecked."""
    if not typed.strip():
        return Attempt(None, checked=False)
    wait = throttle.wait(keys)
    if wait > 0:
        return Attempt(None, checked=False, wait=wait)
    hold = throttle.pause()
    if hold > 0:
        sleep(hold)
    role = passwords.role_for(typed)
    if role is not None:
        throttle.passed(keys)
        return Attempt(role)
    return Attempt(None, wait=throttle.failed(keys))


# How long each kind of pass is good for, in seconds.
TICKET_S = 60  # the one-time step from a signed-in session to its remember-me cookie
REMEMBER_S = 30 * 24 * 3600  # the cookie
SESSION_S = 30 * 24 * 3600  # a browser tab left open
PURPOSES = {"session": SESSION_S, "ticket": TICKET_S, "cookie": REMEMBER_S}


class Passes:
    """Signed proof that a password was typed: kept in a session's state, in a cookie, or for
    a minute as the ticket a browser trades for that cookie.

    A pass names the role and a fingerprint of the password that was typed (an HMAC under the
    server's secret, so a pass cannot be used to guess the password offline). It stops
    working when that password is no longer configured, when its time is up, or when the
    secret changes. Each purpose has its own salt: a ticket is not a cookie.
    """

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a pass needs a secret")
        self._secret = secret.encode()
        self._signers = {p: URLSafeTimedSerializer(secret, salt=f"owngpt-access-{p}")
                         for p in PURPOSES}

    def issue(self, role: Role, password: str, purpose: str) -> str:
        """A pass for `role`, opened by `password`."""
        return self._signers[purpose].dumps({"role": role, "fp": self._fingerprint(password)})

    def read(self, token: str | None, passwords: Passwords, purpose: str) -> Role | None:
        """The role a pass still grants, or None (forged, expired, or its password gone)."""
        body = self.verify(token, purpose)
        if body is None:
            return None
        role, fp = body.get("role"), str(body.get("fp", ""))
        if role not in (ADMIN, VISITOR):
            return None
        if _any_fingerprint(fp, (self._fingerprint(p) for p in passwords.all(role))):
            return role
        return None

    def verify(self, token: str | None, purpose: str) -> dict[str, Any] | None:
        """A pass's signed body if it is genuine and in date, without looking at passwords."""
        if not token or len(token) > 4096:
            return None
        try:
            body = self._signers[purpose].loads(token, max_age=PURPOSES[purpose])
        except BadSignature:  # SignatureExpired is one too
            return None
        return body if isinstance(body, dict) else None

    def reissue(self, body: Mapping[str, Any], purpose: str) -> str:
        """The same pass for another purpose (a ticket becomes a cookie)."""
        return self._signers[purpose].dumps({"role": body["role"], "fp": body["fp"]})

    def _fingerprint(self, password: str) -> str:
        return hmac.new(self._secret, password.strip().encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()[:32]


def _any_fingerprint(fp: str, candidates: Iterable[str]) -> bool:
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(fp.encode(), candidate.encode())
    return found
