"""Shared pieces of the fake OpenAI and Ollama servers: replies, faults, pacing, HTTP plumbing."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self, TypedDict, TypeVar

log = logging.getLogger("tests.fakes")

# Filler words appended after the echo so replies reach the configured length.
FILLER_WORDS: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua",
)  # fmt: skip
# Reasoning / thinking text streamed before the content by the "reasoning" fault.
THINKING_TOKENS: tuple[str, ...] = ("Let", " me", " think", " about", " this", ".")
THINKING_TEXT = "".join(THINKING_TOKENS)

# Fault names (without the "fault-" prefix) understood by both servers.
COMMON_FAULTS: tuple[str, ...] = (
    "429",
    "500",
    "slow",
    "disconnect",
    "context",
    "reasoning",
    "stream-error",
    # The stream ends cleanly part-way, as a proxy or a crashed worker makes it: the body is
    # delimited by closing the connection (HTTP/1.1 without length or chunking) ...
    "cut-close",
    # ... or the chunked body is properly terminated (0-length chunk) before the end.
    "cut-chunked",
    # Nothing but the opening (OpenAI: the role chunk, then [DONE]; Ollama: a done line).
    "empty",
)
# Faults that end a streamed body cleanly before the server's end-of-answer signal.
CLEAN_CUTS: tuple[str, ...] = ("cut-close", "cut-chunked")
FAULT_PREFIX = "fault-"
# Out-of-band control endpoint, so a separate process (e2e, a person) can flip settings.
CONTROL_PATH = "/_fake/config"
_SETTINGS: dict[str, tuple[type, ...]] = {
    "fault": (str, type(None)),
    "tokens": (int,),
    "rate": (int, float),
    "slow_first_token": (int, float),
}

# Whitespace stays attached to the following word so "".join(tokens) round-trips exactly;
# long runs are cut at 16 characters so text without spaces still streams in pieces.
_WORDISH = re.compile(r"\s*\S{1,16}|\s+")


def reply_tokens(last_user_text: str, tokens: int) -> list[str]:
    """Return the content tokens of the fake reply; their join is "Echo: " + text + filler."""
    out = ["Echo", ":", *_WORDISH.findall(" " + last_user_text)]
    i = 0
    while len(out) < tokens:
        out.append(" " + FILLER_WORDS[i % len(FILLER_WORDS)])
        i += 1
    return out


def message_text(message: Any) -> str:
    """Return the text of one chat message (string content or a list of text parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def last_user_text(messages: Any) -> str:
    """Return the text of the last message with role "user" ("" if none)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def total_chars(messages: Any) -> int:
    """Return the total number of text characters in the messages."""
    if not isinstance(messages, list):
        return 0
    return sum(len(message_text(m)) for m in messages)


def estimate_prompt_tokens(messages: Any) -> int:
    """Deterministic prompt-token estimate: characters // 4 + 4 per message."""
    count = len(messages) if isinstance(messages, list) else 0
    return total_chars(messages) // 4 + 4 * count


def fault_of_model(model: str) -> str | None:
    """Return the fault named by a "fault-xxx" model (an Ollama ":tag" is ignored), else None."""
    if not model.startswith(FAULT_PREFIX):
        return None
    return model[len(FAULT_PREFIX) :].split(":", 1)[0] or None


@dataclass
class ReplyPlan:
    """What one chat reply will send: thinking tokens, content tokens, how it ends."""

    thinking: list[str]
    content: list[str]
    finish_reason: str = "stop"
    # Number of tokens (thinking + content) sent before a disconnect / stream error, if any.
    cut: int | None = None

    @property
    def text(self) -> str:
        """Full content text."""
        return "".join(self.content)

    @property
    def total(self) -> int:
        """Number of tokens in the whole reply (thinking + content)."""
        return len(self.thinking) + len(self.content)

    def sent(self, count: int) -> tuple[int, int]:
        """Split a number of sent tokens into (thinking, content) counts."""
        thinking = min(count, len(self.thinking))
        return thinking, count - thinking


def make_plan(
    messages: Any, tokens: int, limit: Any, fault: str | None, thinking: bool
) -> ReplyPlan:
    """Build the reply for a chat request; `limit` caps content tokens (finish "length")."""
    content = reply_tokens(last_user_text(messages), tokens)
    finish = "stop"
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(content):
        content = content[:limit]
        finish = "length"
    plan = ReplyPlan(list(THINKING_TOKENS) if thinking else [], content, finish)
    if fault in ("disconnect", "stream-error", *CLEAN_CUTS):
        plan.cut = max(1, plan.total // 2)
    elif fault == "empty":
        plan.thinking, plan.content = [], []
    elif fault == "content-filter":
        plan.content = plan.content[: max(1, len(plan.content) // 2)]
        plan.finish_reason = "content_filter"
    return plan


class Aborted(Exception):
    """Raised inside a handler to drop the connection (server stopping)."""


class HungUp(Aborted):
    """Raised inside a handler when the client closed the connection mid-response."""


# How often a waiting handler looks whether its client hung up: the stop benchmark's resolution.
HANGUP_POLL = 0.002


def peer_closed(conn: socket.socket) -> bool:
    """Whether the client closed its side (EOF or reset), without consuming any byte."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Pacer:
    """Paces tokens at `rate` per second against a fixed schedule; never sleeps when rate is 0.

    With a connection to watch, every wait also notices the client hanging up (the way a real
    server stops generating): it raises HungUp within HANGUP_POLL seconds.
    """

    def __init__(
        self, rate: float, stopping: threading.Event, conn: socket.socket | None = None
    ) -> None:
        self.rate = rate
        self._stopping = stopping
        self._conn = conn
        self._t0: float | None = None

    def sleep(self, seconds: float, until: threading.Event | None = None) -> None:
        """Sleep, but wake up and raise Aborted as soon as the server stops or the client goes;
        return early once `until` is set."""
        if seconds <= 0:
            return
        watch = self._conn is not None or until is not None
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if until is not None and until.is_set():
                return
            if self._stopping.wait(min(left, HANGUP_POLL) if watch else left):
                raise Aborted
            if self._conn is not None and peer_closed(self._conn):
                raise HungUp

    def wait(self, index: int) -> None:
        """Wait until token number `index` is due."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        # A fixed schedule (not sleep-per-token) so write latency does not accumulate.
        self.sleep(self._t0 + index / self.rate - now)


def emit_tokens(
    handler: FakeHandler,
    plan: ReplyPlan,
    pacer: Pacer,
    encode_thinking: Callable[[str], bytes],
    encode_content: Callable[[str], bytes],
) -> int:
    """Write thinking then content tokens as stream chunks; stop at plan.cut; return count sent."""
    limit = plan.cut if plan.cut is not None else plan.total
    pairs: Iterable[tuple[Callable[[str], bytes], str]] = [
        *((encode_thinking, t) for t in plan.thinking),
        *((encode_content, t) for t in plan.content),
    ]
    write = handler.write_chunk
    sent = 0
    for encode, tok in pairs:
        if sent >= limit:
            break
        pacer.wait(sent)
        write(encode(tok))
        sent += 1
    return sent


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, like the real servers send."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def jstr(text: str) -> str:
    """JSON-encode one string (for splicing into pre-built chunk templates)."""
    return json.dumps(text, ensure_ascii=False)


def rfc3339(ns: int | None = None) -> str:
    """UTC timestamp with nanoseconds, as Go formats time.Time in JSON."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class FakeHandler(BaseHTTPRequestHandler):
    """One connection; requests are routed to the owning fake server's dispatch()."""

    protocol_version = "HTTP/1.1"
    # Each stream event is a small write; Nagle + delayed ACK would add ~40 ms stalls.
    disable_nagle_algorithm = True
    server: _HTTPServer
    fake: FakeServer
    headers_sent: bool

    def setup(self) -> None:
        """Register the connection so stop() can cut it."""
        super().setup()
        self.fake = self.server.fake
        self.fake._track(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        with contextlib.suppress(OSError):
            super().finish()
        self.fake._untrack(self.connection)

    def handle(self) -> None:
        """Serve keep-alive requests; a vanished client or a stopping server just ends it."""
        with contextlib.suppress(OSError, Aborted):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Access log only when the fake is verbose (standalone mode)."""
        if self.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        """Route GET."""
        self._dispatch()

    def do_POST(self) -> None:
        """Route POST."""
        self._dispatch()

    def do_HEAD(self) -> None:
        """Route HEAD."""
        self._dispatch()

    def do_DELETE(self) -> None:
        """Route DELETE."""
        self._dispatch()

    def _dispatch(self) -> None:
        self.headers_sent = False
        self.chunked = True
        self.started = time.monotonic()
        self.started_ns = time.time_ns()
        # Always consume the body first: replying early would desync a keep-alive connection.
        self.body = self._read_body()
        self.fake.calls.append((self.command, self.path))
        try:
            if self.path.startswith(CONTROL_PATH):
                self.fake.control(self)
            else:
                self.fake.dispatch(self)
        except HungUp:
            self.fake._hung_up(self)
            raise
        except OSError:
            # A write to a client that has gone (our own abort() sets close_connection first).
            if not self.close_connection and not self.fake._stopping.is_set():
                self.fake._hung_up(self)
            raise
        except Aborted:
            raise
        except Exception:
            log.exception("fake server bug while handling %s %s", self.command, self.path)
            if self.headers_sent:
                self.abort()
            else:
                self.send_json(500, {"error": "fake server bug, see log"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self) -> Any:
        """Parsed JSON body; raises ValueError if it is not JSON."""
        return json.loads(self.body or b"null")

    def header_dict(self) -> dict[str, str]:
        """Request headers with lower-cased names."""
        return {k.lower(): v for k, v in self.headers.items()}

    def _head(self, status: int, headers: dict[str, str] | None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        truncate: int | None = None,
    ) -> None:
        """Send a response with Content-Length; `truncate` sends only that many bytes, then cuts."""
        self._head(status, headers)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.headers_sent = True
        if self.command == "HEAD":
            return
        if truncate is None:
            self.wfile.write(body)
        else:
            self.wfile.write(body[:truncate])
            self.abort()

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        """Send a JSON response."""
        self.send_bytes(status, dumps(obj), "application/json; charset=utf-8", headers)

    def begin_stream(
        self,
        status: int,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        until_close: bool = False,
    ) -> None:
        """Send headers for a chunked stream (so a cut connection is detectable by clients).

        `until_close` sends an HTTP/1.1 body delimited by closing the connection instead (no
        length, no chunking), as some proxies do: the client cannot tell a cut from an end."""
        self._head(status, headers)
        self.send_header("Content-Type", content_type)
        self.chunked = not until_close
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.headers_sent = True

    def write_chunk(self, data: bytes) -> None:
        """Write one chunk in a single send."""
        if self.chunked:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def end_stream(self) -> None:
        """End the body cleanly: the zero-length chunk, or closing the connection."""
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        """Cut the connection abruptly: no terminating chunk, no further bytes."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # server_close() must not wait for in-flight streams; stop() cuts them instead.
    block_on_close = False
    fake: FakeServer


class ServerSettings(TypedDict, total=False):
    """Keyword arguments every fake server takes; the defaults are FakeServer.__init__'s."""

    tokens: int
    rate: float
    slow_first_token: float
    host: str
    port: int


class FakeServer:
    """Base class: settings, fault switch, recordings and start/stop of the HTTP server."""

    FAULTS: ClassVar[tuple[str, ...]] = COMMON_FAULTS
    URL_SUFFIX: ClassVar[str] = ""

    def __init__(
        self,
        *,
        tokens: int = 12,
        rate: float = 0.0,
        slow_first_token: float = 3.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tokens = tokens
        self.rate = rate
        self.slow_first_token = slow_first_token
        self.host = host
        self.port = port
        # Name without the "fault-" prefix applied to every chat request; None = off.
        self.fault: str | None = None
        self.verbose = False
        # Parsed JSON bodies / lower-cased headers of chat requests, index-aligned.
        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []
        # (method, path) of every request, for routing assertions.
        self.calls: list[tuple[str, str]] = []
        # Responses whose client hung up before the end (waiting or streaming): how many,
        # when (time.monotonic()) and which path; `wait_for_hangups` waits on them.
        self.hangups: list[tuple[float, str]] = []
        self._hangup = threading.Condition()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._release = threading.Event()  # see release_slow()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """http://host:port without any API prefix."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL to give to the client library."""
        return self.base_url + self.URL_SUFFIX

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), FakeHandler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        # shutdown() waits up to one poll interval; 10 ms keeps test teardown quick for ~no CPU.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, including streams in progress."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        if self._stopping.is_set():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _hung_up(self, handler: FakeHandler) -> None:
        handler.close_connection = True
        with self._hangup:
            self.hangups.append((time.monotonic(), handler.path))
            self._hangup.notify_all()

    def wait_for_hangups(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until `count` responses in all saw their client hang up; False on timeout."""
        with self._hangup:
            return self._hangup.wait_for(lambda: len(self.hangups) >= count, timeout)

    def pacer(self, fault: str | None = None, handler: FakeHandler | None = None) -> Pacer:
        """A pacer for one reply at the current rate; the "slow" fault first waits its delay.

        Given the handler, its waits notice the client hanging up (see `hangups`)."""
        pacer = Pacer(self.rate, self._stopping, handler.connection if handler else None)
        if fault == "slow":
            pacer.sleep(self.slow_first_token, until=self._release)
        return pacer

    def release_slow(self) -> None:
        """End the first-token wait of every "slow" request waiting now (later ones wait in
        full): a test holds a request as long as it needs, then lets it answer."""
        released, self._release = self._release, threading.Event()
        released.set()

    def simulate_generation(self, plan: ReplyPlan, fault: str | None) -> float:
        """Non-streaming reply: take as long as streaming it would; return when it started."""
        pacer = self.pacer(fault)
        first = time.monotonic()
        if self.rate > 0:
            pacer.sleep(plan.total / self.rate)
        return first

    def resolve_fault(self, model: str) -> str | None:
        """Fault for this request: a fault-* model name wins, else the `fault` attribute."""
        fault = fault_of_model(model)
        if fault not in self.FAULTS:
            fault = self.fault
        return fault if fault in self.FAULTS else None

    def fault_models(self) -> list[str]:
        """Model names that trigger this server's faults."""
        return [FAULT_PREFIX + f for f in self.FAULTS]

    def record(self, handler: FakeHandler, body: Any) -> None:
        """Remember a chat request for assertions."""
        self.requests.append(body)
        self.headers.append(handler.header_dict())

    def settings(self) -> dict[str, Any]:
        """Current runtime settings (what the control endpoint reads and writes)."""
        return {name: getattr(self, name) for name in _SETTINGS}

    def control(self, handler: FakeHandler) -> None:
        """GET/POST /_fake/config: read or change fault, tokens, rate, slow_first_token."""
        if handler.command == "POST":
            try:
                body = handler.json_body()
            except ValueError:
                body = None
            if not isinstance(body, dict) or any(
                k not in _SETTINGS or not isinstance(v, _SETTINGS[k]) for k, v in body.items()
            ):
                handler.send_json(400, {"error": f"expected a JSON object with {list(_SETTINGS)}"})
                return
            for name, value in body.items():
                setattr(self, name, value)
        handler.send_json(200, self.settings())

    def dispatch(self, handler: FakeHandler) -> None:
        """Route one request (implemented by each server)."""
        raise NotImplementedError


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """CLI options shared by all standalone entry points."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tokens", type=int, default=12, help="minimum reply length in tokens")
    parser.add_argument("--rate", type=float, default=0.0, help="tokens/second, 0 = max speed")
    parser.add_argument(
        "--slow-first-token", type=float, default=3.0, help="delay of the 'slow' fault (s)"
    )
    parser.add_argument("--fault", default=None, help="fault for every chat, e.g. 429")
    parser.add_argument("--quiet", action="store_true", help="no access log")


S = TypeVar("S", bound=FakeServer)


def server_from_args(cls: type[S], args: argparse.Namespace, port: int, **extra: Any) -> S:
    """Build a fake from the common CLI options; `extra` are the server's own arguments."""
    server = cls(
        tokens=args.tokens,
        rate=args.rate,
        slow_first_token=args.slow_first_token,
        host=args.host,
        port=port,
        **extra,
    )
    server.fault = args.fault
    server.verbose = not args.quiet
    return server


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def block_until_interrupted(servers: list[FakeServer]) -> None:
    """Block until Ctrl-C (or SIGTERM), then stop the servers."""
    # SIGTERM (e.g. from a test harness) should stop as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()


def run_standalone(
    prog: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    from_args: Callable[[argparse.Namespace, int], S],
    banner: Callable[[S], list[str]],
    argv: list[str] | None,
) -> None:
    """main() of one fake alone: parse the CLI, start, print the banner, run until Ctrl-C."""
    parser = argparse.ArgumentParser(prog=prog)
    add_args(parser)
    add_common_args(parser)
    args = parser.parse_args(argv)
    server = from_args(args, args.port).start()
    print("\n".join(banner(server)), flush=True)
    block_until_interrupted([server])
