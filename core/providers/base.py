"""The one contract every model adapter speaks, whatever its wire protocol.

An adapter implements `Provider._events()`: an async generator that turns its SDK's stream
into small events (a `str` text delta, a `Thinking` reasoning delta, a `Facts` of what the
server reported). `Reply` does all the bookkeeping around them: timings, estimated usage,
cut-off detection and error mapping, so a new wire protocol is one small file.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from core.config import mask_url
from core.tokens import estimate_messages, estimate_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation as the model sees it."""

    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Params:
    """Sampling settings; None means "the server's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    num_ctx: int | None = None  # Ollama's context window for this request; others ignore it


# The values each parameter may take, whichever way it comes in (a widget, a stored
# conversation, an import): (lowest, highest), both allowed; integers for the integer ones.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "max_tokens": (1, 1_000_000),
    "seed": (0, 2**63 - 1),
    "num_ctx": (1, 10_000_000),
}
INTEGER_PARAMS = frozenset({"max_tokens", "seed", "num_ctx"})


def param_ok(name: str, value: object) -> bool:
    """Whether `value` is one `name` may take: a number of the right kind (never a bool, NaN
    or infinity) within PARAM_RANGES."""
    if name not in PARAM_RANGES or isinstance(value, bool):
        return False
    kinds: tuple[type, ...] = (int,) if name in INTEGER_PARAMS else (int, float)
    if not isinstance(value, kinds):
        return False
    low, high = PARAM_RANGES[name]
    return low <= value <= high  # False for NaN


@dataclass
class Usage:
    """Tokens one call used, as the server counted them (or estimated, then flagged)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


class ErrorKind(StrEnum):
    """What went wrong, in the terms a user can act on."""

    AUTH = "auth"
    MODEL_NOT_FOUND = "model_not_found"
    RATE_LIMITED = "rate_limited"
    CONTEXT_TOO_LONG = "context_too_long"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    SERVER = "server"
    BAD_REQUEST = "bad_request"
    CONTENT_FILTER = "content_filter"
    BUDGET = "budget"  # refused before it went out: the monthly budget's hard stop


class ProviderError(Exception):
    """A failed call, as data: its kind, the catalog key of what to do about it, the server's
    words. The sentence is built where it is shown (`core.ui.errors`), for its reader: a blind
    comparison shows only the kind.

    `hint` names an entry of the i18n catalog (default `error.<kind>`); `context` fills its
    placeholders (model, url, retry_after). `detail` is what the server said: only ever the
    message of an API's JSON error (see `server_words`), clipped, with any key redacted, never
    the body of whatever page an address returned (a failure that is not the server's names
    its exception instead). `http_status` and `request_id` are
    the server's, when it gave them (shown under the sentence, kept in the call's row).
    """

    def __init__(
        self,
        kind: ErrorKind,
        detail: str = "",
        *,
        hint: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        **context: Any,
    ) -> None:
        self.kind = ErrorKind(kind)
        self.detail = detail
        self.hint = hint or f"error.{self.kind.value}"
        self.http_status = http_status
        self.request_id = request_id
        self.context = context
        super().__init__(f"{self.kind.value}: {detail}" if detail else self.kind.value)


class Thinking(str):
    """An adapter event: a piece of reasoning, kept apart from the answer."""

    __slots__ = ()


@dataclass(slots=True)
class Facts:
    """An adapter event: what the server reported besides text. None leaves a fact as it was.

    `complete` is True only on the server's own end-of-answer signal (OpenAI: a finish_reason
    or the usage chunk; Ollama: the `done: true` line).
    """

    usage: Usage | None = None
    finish_reason: str | None = None
    server_model: str | None = None
    load_s: float | None = None
    complete: bool = False


Event = str | Facts  # a str is a text delta; Thinking is a str too
EMPTY_FINISHES = (None, "stop")  # an empty answer that ended like this told the user nothing


class Reply:
    """A streamed answer. `async for delta in reply` yields the answer's text deltas ("" when
    a chunk carried only reasoning, which accumulates in `reasoning`); it can be iterated once.

    The request goes out on the first iteration (`started`, a `time.perf_counter()` value, and
    `started_at`, wall-clock UTC, are set then); `ttft` and `total` are seconds from there.
    Iteration ends normally only when the server said the answer is complete (`complete`):

    - a stream that just stops, however cleanly (a proxy closing the connection, a chunked
      body terminated early), raises `ProviderError(CONNECTION, hint="error.interrupted")`,
      the partial text kept;
    - a stream that brought no text and no reasoning at all raises a ProviderError with
      hint "error.empty_answer" (the user is told the answer was empty rather than shown
      nothing): kind CONNECTION when no end signal came (only the role chunk, then `[DONE]`,
      which the SDK swallows, looks exactly like a connection closed after the role chunk),
      kind SERVER when the server did say it was done;
    - `finish_reason == "content_filter"` raises `ProviderError(CONTENT_FILTER)`, partial
      text kept; `"length"` ends normally (the caller shows that the answer was cut at the
      token limit).

    When the server reported no usage, `usage` is estimated from the text and flagged.
    Cancelling the task that iterates drops the HTTP connection at once (the SDKs close
    their response on `CancelledError`), also while the first token is still coming.
    All state of one call lives here, never on the shared, cached `Provider`.
    """

    def __init__(
        self,
        messages: list[Message],
        events: Callable[[], AsyncIterator[Event]],
        error: Callable[[Exception, bool], ProviderError],
    ) -> None:
        self.messages = messages
        self._events = events
        self._error = error
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.server_model: str | None = None  # the model the server says answered
        self.load_s: float | None = None  # Ollama: seconds spent loading the model
        self.started: float | None = None
        self.started_at: datetime | None = None
        self.ttft: float | None = None  # seconds from request to the first token
        self.total: float | None = None  # seconds from request to the end of the stream
        self.complete = False
        self._iterator: AsyncIterator[str] | None = None

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        """The reasoning so far, kept apart from the answer."""
        return "".join(self._reasoning)

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None:
            raise RuntimeError("a Reply can be iterated only once")
        self._iterator = self._deltas()
        return self._iterator

    async def aclose(self) -> None:
        """End the stream and release its connection (when a caller stops iterating early)."""
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]

    async def _deltas(self) -> AsyncIterator[str]:
        # Runs once per chunk: locals instead of attribute look-ups, no per-chunk allocation.
        text, reasoning = self._text.append, self._reasoning.append
        clock = time.perf_counter
        self.started_at = datetime.now(UTC)
        started = self.started = clock()
        try:
            async with aclosing(self._events()) as events:
                async for event in events:
                    kind = type(event)
                    if kind is str:
                        if event:
                            if self.ttft is None:
                                self.ttft = clock() - started
                            text(event)
                            yield event
                    elif kind is Thinking:
                        if self.ttft is None:
                            self.ttft = clock() - started
                        reasoning(event)
                        yield ""
                    else:
                        self._take(event)  # type: ignore[arg-type]
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self._error(exc, bool(self._text)) from None
        finally:
            self.total = clock() - started
        self._settle()

    def _take(self, facts: Facts) -> None:
        if facts.usage is not None:
            self.usage = facts.usage
        if facts.finish_reason is not None:
            self.finish_reason = facts.finish_reason
        if facts.server_model:
            self.server_model = facts.server_model
        if facts.load_s is not None:
            self.load_s = facts.load_s
        if facts.complete:
            self.complete = True

    def _settle(self) -> None:
        """After the stream ran out: estimate usage if none came, then judge how it ended."""
        if self.usage is None:
            self.usage = self.estimate_usage()
        if not self._text and not self._reasoning and self.finish_reason in EMPTY_FINISHES:
            # Without the end signal this is also a stream that just stopped: kind connection.
            kind = ErrorKind.SERVER if self.complete else ErrorKind.CONNECTION
            raise self._error(ProviderError(kind, hint="error.empty_answer"), False)
        if not self.complete:
            raise self._error(ProviderError(ErrorKind.CONNECTION, hint="error.interrupted"),
                              True)
        if self.finish_reason == "content_filter":
            raise self._error(ProviderError(ErrorKind.CONTENT_FILTER), bool(self._text))

    def estimate_usage(self) -> Usage:
        """Usage counted from the text itself, flagged as estimated."""
        prompt = estimate_messages(self.messages)
        reasoning = estimate_tokens(self.reasoning)
        return Usage(
            input_tokens=prompt,
            output_tokens=estimate_tokens(self.text) + reasoning,
            reasoning_tokens=reasoning,
            estimated=True,
        )

    @property
    def output_tokens_per_s(self) -> float | None:
        """Answer speed after the first token, the number users compare models by."""
        if not self.usage or self.ttft is None or self.total is None:
            return None
        span = self.total - self.ttft
        return self.usage.output_tokens / span if span > 0 else None


@dataclass
class ModelInfo:
    """What a server says about one model."""

    id: str
    details: dict[str, Any] = field(default_factory=dict)


class Provider:
    """An adapter for one wire protocol: it translates its SDK into this contract.

    A configured endpoint's provider is cached and shared by every session, a session
    endpoint's kept in that session (`providers.provider_for`): it holds the client and its
    connection pool, never the state of one call.
    """

    url: str = ""  # where requests go, without credentials (fills the error sentences)

    def models(self) -> list[str]:
        """Model ids the endpoint offers for chat."""
        raise NotImplementedError

    def stream(self, model: str, messages: list[Message], params: Params) -> Reply:
        """A chat completion, not yet sent: iterating the Reply sends it. Does no I/O."""

        def error(exc: Exception, partial: bool) -> ProviderError:
            return self.error(exc, model=model, partial=partial)

        return Reply(messages, lambda: self._events(model, messages, params), error)

    def _events(self, model: str, messages: list[Message], params: Params) -> AsyncIterator[Event]:
        """The adapter's part: send the request, yield its stream as events."""
        raise NotImplementedError

    def error(self, exc: Exception, *, model: str = "", partial: bool = False) -> ProviderError:
        """The SDK's exception as a ProviderError that says what to do, with no key in it.

        A ProviderError raised by the base (cut-off, empty answer) gets the model and URL;
        anything the adapter does not recognise is a failure of our own, logged with its
        traceback."""
        if isinstance(exc, ProviderError):
            exc.context.setdefault("model", model or "?")
            exc.context.setdefault("url", self.url)
            return exc
        err = self._classify(exc, model=model or "?", partial=partial)
        if err.hint == "error.unexpected":
            log_failure(exc, self._secrets())
        return err

    def _classify(self, exc: Exception, *, model: str, partial: bool) -> ProviderError:
        """Turn one of the SDK's exceptions into a ProviderError (each adapter's own)."""
        raise NotImplementedError

    def _secrets(self) -> tuple[str | None, ...]:
        """Values to blank out of anything logged or shown."""
        return ()


# Any server's models whose names say they cannot chat: embedding, audio, image, moderation.
NOT_CHAT_WORDS = ("embed", "whisper", "tts", "dall-e", "moderation", "rerank", "transcribe",
                  "speech", "gpt-image", "imagen", "stable-diffusion")


def looks_like_chat(model_id: str) -> bool:
    """A guess by name for servers that say nothing about what a model can do."""
    name = model_id.lower()
    return not any(word in name for word in NOT_CHAT_WORDS)


_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|key|api)[-_][A-Za-z0-9_\-*]{6,}", re.IGNORECASE)
DETAIL_CHARS = 300  # the server's words shown under a sentence, at most


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Text with the given secrets, anything shaped like an API key and any `user:pass@` of
    a URL blanked out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return mask_url(_KEY_PATTERN.sub(lambda m: m.group(1) + "-***", text))


def server_words(body: object) -> str:
    """What a server said in an error, by the one rule for showing it: the message of an
    API's JSON error (`{"error": {"message": ...}}`, `{"error": "..."}`, `{"message": ...}`
    or `{"detail": "..."}`), clipped to DETAIL_CHARS. Anything else (an HTML page, plain
    text, JSON of another shape) gives "": an address that is not the API it claims to be
    must not have its page shown, or a connection test becomes a way to read internal pages.
    """
    if not isinstance(body, dict):
        return ""
    inner = body.get("error", body)
    if isinstance(inner, dict):
        inner = inner.get("message", inner.get("detail"))
    elif inner is body:
        inner = body.get("message", body.get("detail"))
    if not isinstance(inner, str):
        return ""
    words = " ".join(inner.split())
    return words if len(words) <= DETAIL_CHARS else words[:DETAIL_CHARS - 1] + "…"


def log_failure(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> None:
    """Log a failure of our own with its traceback, any key blanked out of it."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    log.error("unexpected failure in a model call\n%s", redact("".join(lines), secrets))
