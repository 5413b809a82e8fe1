"""The one contract every model adapter speaks, whatever its wire protocol."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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


class ProviderError(Exception):
    """A failed call: its kind, the catalog key of what to do about it, the server's words.

    `hint` names an entry of the i18n catalog (default `error.<kind>`); `context` fills its
    placeholders. `detail` is the server's own message with any key redacted.
    """

    def __init__(
        self,
        kind: ErrorKind,
        detail: str = "",
        *,
        hint: str | None = None,
        **context: Any,
    ) -> None:
        self.kind = ErrorKind(kind)
        self.detail = detail
        self.hint = hint or f"error.{self.kind.value}"
        self.context = context
        super().__init__(f"{self.kind.value}: {detail}" if detail else self.kind.value)


def estimate_tokens(text: str) -> int:
    """A rough token count for when a server reports none: ~4 characters a token, CJK 1 each."""
    wide = sum(1 for ch in text if ord(ch) > 0x2E80)
    return wide + (len(text) - wide + 3) // 4


class Reply:
    """A streamed answer. Iterate it for the answer's text deltas ("" when a chunk carried only
    reasoning, which accumulates in `reasoning`); once exhausted it holds usage, finish reason
    and timings.

    Adapters' generators run inside `streaming()`, call `push()` for each piece (it keeps the
    text and the time to first token), fill `usage` and `finish_reason`, and end early when
    `stopping` is set. The work per chunk is kept to one generator and one call, as a fast
    local model sends a chunk every few tens of microseconds (see bench/README.md).
    """

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.ttft: float | None = None  # seconds from request to the first visible token
        self.total: float | None = None  # seconds from request to the end of the stream
        self.done = False
        self.stopping = False  # set from another thread; the adapter ends at the next chunk
        self._source: Iterator[str] | None = None
        self._closer: Callable[[], None] | None = None

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        """The reasoning so far, kept apart from the answer."""
        return "".join(self._reasoning)

    def push(self, text: str, reasoning: str = "") -> str:
        """Record a piece of the answer; adapters yield what this returns (the text)."""
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started
        if text:
            self._text.append(text)
        if reasoning:
            self._reasoning.append(reasoning)
        return text

    def attach(self, source: Iterator[str], closer: Callable[[], None] | None = None) -> Reply:
        """Give the reply the adapter's generator (and a way to drop its connection)."""
        self._source = source
        self._closer = closer
        return self

    def __iter__(self) -> Iterator[str]:
        # The adapter's generator itself: no extra layer between the SDK and the caller.
        assert self._source is not None, "Reply.attach() was not called"
        return self._source

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Wrap an adapter's loop: record the total time however it ends and, when the
        stream ran out by itself, that it is done, with an estimated usage if none came."""
        try:
            yield
            self.done = not self.stopping
            if self.usage is None:
                self.usage = self.estimate_usage()
        finally:
            self.total = time.perf_counter() - self.started

    def estimate_usage(self) -> Usage:
        """Usage counted from the text itself, flagged as estimated."""
        prompt = sum(estimate_tokens(m.content) + 4 for m in self.messages)
        reasoning = estimate_tokens(self.reasoning)
        return Usage(
            input_tokens=prompt,
            output_tokens=estimate_tokens(self.text) + reasoning,
            reasoning_tokens=reasoning,
            estimated=True,
        )

    def close(self) -> None:
        """End the stream at the next chunk and drop the connection; safe to call twice."""
        self.stopping = True
        if self._closer is not None:
            with contextlib.suppress(Exception):  # a dead connection is already closed
                self._closer()

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
    """An adapter for one wire protocol. Subclasses translate their SDK into this contract."""

    def models(self) -> list[str]:
        """Model ids the endpoint offers for chat."""
        raise NotImplementedError

    def stream(self, model: str, messages: list[Message], params: Params) -> Reply:
        """Start a chat completion; the returned Reply yields text deltas when iterated."""
        raise NotImplementedError


_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|key|api)[-_][A-Za-z0-9_\-*]{6,}", re.IGNORECASE)


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Text with the given secrets and anything shaped like an API key blanked out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "-***", text)
