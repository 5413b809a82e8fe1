"""Local (or remote) Ollama, on the official `ollama` package."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama

from core.providers.base import (
    ErrorKind,
    Message,
    ModelInfo,
    Params,
    Provider,
    ProviderError,
    Reply,
    Usage,
    redact,
)

# The ollama client waits forever by default; loading a large model can take minutes.
TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=5.0)


@dataclass(frozen=True)
class PullProgress:
    """One step of `ollama pull`: a status line and, while downloading, bytes done of total."""

    status: str
    completed: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        """Share done, 0..1 (0 while the size is unknown)."""
        return min(self.completed / self.total, 1.0) if self.total else 0.0


class OllamaProvider(Provider):
    """One Ollama server."""

    def __init__(self, host: str, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.host = host.rstrip("/")
        self.client = ollama.Client(host=self.host, timeout=timeout)
        self.server_tokens_per_s: float | None = None

    def models(self) -> list[str]:
        """Names of the models pulled on this server."""
        try:
            listing = self.client.list()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self.error(exc) from None
        return sorted(m.model for m in listing.models if m.model)

    def details(self, model: str) -> ModelInfo:
        """Family, size, quantization, context length and capabilities of one model."""
        try:
            shown = self.client.show(model)
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, model=model) from None
        info: dict[str, Any] = {}
        if shown.details:
            info.update(shown.details.model_dump(exclude_none=True))
        for key, value in (shown.modelinfo or {}).items():
            if key.endswith(".context_length"):
                info["context_length"] = value
        if shown.capabilities:
            info["capabilities"] = list(shown.capabilities)
        return ModelInfo(id=model, details=info)

    def pull(self, model: str) -> Iterator[PullProgress]:
        """Download a model, yielding progress as Ollama reports it."""
        try:
            for step in self.client.pull(model, stream=True):
                yield PullProgress(step.status or "", step.completed or 0, step.total or 0)
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, model=model) from None

    def stream(self, model: str, messages: list[Message], params: Params) -> Reply:
        """Start a streamed chat; the request goes out on first iteration."""
        reply = Reply(messages)
        holder: dict[str, Any] = {}

        def close() -> None:
            if "stream" in holder:
                holder["stream"].close()

        return reply.attach(self._deltas(model, messages, params, reply, holder), close)

    def _deltas(
        self,
        model: str,
        messages: list[Message],
        params: Params,
        reply: Reply,
        holder: dict[str, Any],
    ) -> Iterator[str]:
        options = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "num_predict": params.max_tokens,
            "seed": params.seed,
        }
        with reply.streaming():  # times the stream and settles it, however it ends
            try:
                stream = self.client.chat(
                    model=model,
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    options={k: v for k, v in options.items() if v is not None},
                    stream=True,
                )
                holder["stream"] = stream
                push = reply.push  # the loop runs once per token: keep it lean
                for part in stream:
                    if reply.stopping:  # a running generator cannot be closed from outside
                        return
                    message = part.message
                    text, thinking = message.content, message.thinking
                    if text or thinking:
                        yield push(text or "", thinking or "")
                    if part.done:
                        reply.finish_reason = part.done_reason or "stop"
                        reply.usage = _usage(part)
                        if part.eval_count and part.eval_duration:
                            self.server_tokens_per_s = part.eval_count / (part.eval_duration / 1e9)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
                raise self.error(exc, model=model, partial=bool(reply.text)) from None

    def error(self, exc: Exception, *, model: str = "", partial: bool = False) -> ProviderError:
        """The client's exception as a ProviderError that says what to do."""
        if isinstance(exc, ProviderError):
            return exc
        detail = redact(str(getattr(exc, "error", "") or exc))
        kind, hint = _classify(exc, detail, partial)
        return ProviderError(kind, detail, hint=hint, model=model or "?", url=self.host,
                             retry_after="?")


def _classify(exc: Exception, detail: str, partial: bool) -> tuple[ErrorKind, str | None]:
    """Kind and sentence for an exception of the ollama package (or of httpx beneath it)."""
    if isinstance(exc, ollama.ResponseError):
        status, words = exc.status_code, detail.lower()
        if status == 404 or ("not found" in words and "model" in words):
            return ErrorKind.MODEL_NOT_FOUND, "error.ollama_model_not_found"
        if status in (401, 403):
            return ErrorKind.AUTH, None
        if status == 429:
            return ErrorKind.RATE_LIMITED, None
        if "context" in words:
            return ErrorKind.CONTEXT_TOO_LONG, None
        if status in (400, 422):
            return ErrorKind.BAD_REQUEST, None
        return ErrorKind.SERVER, None
    if isinstance(exc, httpx.TimeoutException):
        return ErrorKind.TIMEOUT, None
    if isinstance(exc, ConnectionError | httpx.TransportError):
        return ErrorKind.CONNECTION, "error.interrupted" if partial else "error.ollama_connection"
    return ErrorKind.SERVER, "error.unexpected"


def _usage(final: Any) -> Usage:
    return Usage(
        input_tokens=final.prompt_eval_count or 0,
        output_tokens=final.eval_count or 0,
    )
