"""Local (or remote) Ollama, on the official `ollama` package."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import ollama

from core import aio
from core.config import mask_url
from core.providers.base import (
    ErrorKind,
    Event,
    Facts,
    Message,
    ModelInfo,
    Params,
    Provider,
    ProviderError,
    Thinking,
    Usage,
    looks_like_chat,
    redact,
    server_words,
)
from core.providers.network import proxy_for

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

    def __init__(
        self, host: str, *, timeout: httpx.Timeout = TIMEOUT, proxy: str | None = None
    ) -> None:
        self.host = host.rstrip("/")
        self.url = mask_url(self.host)
        # Our own proxy decision (loopback and NO_PROXY direct), not httpx's reading of the env.
        self.client = ollama.AsyncClient(host=self.host, timeout=timeout,
                                         proxy=proxy_for(self.host, proxy), trust_env=False,
                                         event_hooks={"response": [_refusal]})

    def models(self) -> list[str]:
        """Names of the chat models pulled on this server (embedding models left out)."""
        try:
            return aio.run(self._chat_models())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self.error(exc) from None

    async def _chat_models(self) -> list[str]:
        listing = await self.client.list()
        names = sorted(m.model for m in listing.models if m.model)
        # /api/show says what each model can do; asked all at once, it costs one round trip.
        shown = await asyncio.gather(*(self.client.show(n) for n in names),
                                     return_exceptions=True)
        return [name for name, info in zip(names, shown, strict=True) if _can_chat(name, info)]

    def details(self, model: str) -> ModelInfo:
        """Family, size, quantization, context length and capabilities of one model."""
        try:
            shown = aio.run(self.client.show(model))
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
        """Download a model, yielding progress as Ollama reports it (for sync callers)."""
        steps = self._pull(model)
        try:
            while True:
                try:
                    step = aio.run(anext(steps))
                except StopAsyncIteration:
                    return
                yield step
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, model=model, pulling=True) from None
        finally:
            aio.run(steps.aclose())

    async def _pull(self, model: str) -> AsyncIterator[PullProgress]:
        async with aclosing(await self.client.pull(model, stream=True)) as steps:
            async for step in steps:
                yield PullProgress(step.status or "", step.completed or 0, step.total or 0)

    async def _events(
        self, model: str, messages: list[Message], params: Params
    ) -> AsyncIterator[Event]:
        options = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "num_predict": params.max_tokens,
            "seed": params.seed,
            "num_ctx": params.num_ctx,
        }
        stream = await self.client.chat(
            model=model,
            messages=[{"role": m.role, "content": m.content} for m in messages],
            options={k: v for k, v in options.items() if v is not None},
            stream=True,
        )
        async with aclosing(stream):  # closes the response however the loop ends
            async for part in stream:
                message = part.message
                if message.thinking:
                    yield Thinking(message.thinking)
                if message.content:
                    yield message.content
                if part.done:
                    yield Facts(
                        usage=_usage(part),
                        finish_reason=part.done_reason or "stop",
                        server_model=part.model,
                        load_s=part.load_duration / 1e9 if part.load_duration else None,
                        complete=True,
                    )

    def error(
        self, exc: Exception, *, model: str = "", partial: bool = False, pulling: bool = False
    ) -> ProviderError:
        """The client's exception as a ProviderError that says what to do."""
        err = super().error(exc, model=model, partial=partial)
        if pulling and err.kind == ErrorKind.SERVER and _pull_missing(err.detail):
            err = ProviderError(ErrorKind.MODEL_NOT_FOUND, err.detail, hint="error.pull_missing",
                                http_status=err.http_status, **err.context)
        return err

    def _classify(self, exc: Exception, *, model: str, partial: bool) -> ProviderError:
        # A refusal's words were sifted by `_refusal`; the package raises its own only for an
        # error line of a stream (JSON); anything else is named, not quoted.
        if isinstance(exc, Refused):
            said = exc.error
        elif isinstance(exc, ollama.ResponseError):
            said = server_words({"error": exc.error})
        else:
            said = type(exc).__name__
        detail = redact(said)
        kind, hint, extra = _classify(exc, detail, partial)
        status = getattr(exc, "status_code", None)
        return ProviderError(kind, detail, hint=hint, model=model, url=self.url,
                             http_status=status if isinstance(status, int) and status > 0
                             else None, **extra)


class Refused(ollama.ResponseError):
    """An error response, with only what `server_words` lets through of its body, and the
    Retry-After the ollama package would drop (it keeps no headers)."""

    def __init__(self, error: str, status: int, retry_after: str | None) -> None:
        super().__init__("", status)  # the package would parse and keep a raw body here
        self.error = error
        self.retry_after = retry_after


async def _refusal(response: httpx.Response) -> None:
    """httpx response hook: an error status becomes Refused before the ollama package reads
    the body (it would quote a page that is not Ollama's in full)."""
    if response.status_code >= 400:
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            body = None
        raise Refused(server_words(body), response.status_code,
                      response.headers.get("retry-after"))


def _can_chat(name: str, shown: object) -> bool:
    """Ollama's own word ("completion" in capabilities) first; else a guess by name."""
    capabilities = getattr(shown, "capabilities", None)
    if capabilities:
        return "completion" in capabilities
    return looks_like_chat(name)


def _pull_missing(detail: str) -> bool:
    words = detail.lower()
    return "file does not exist" in words or "not found" in words


def _classify(
    exc: Exception, detail: str, partial: bool
) -> tuple[ErrorKind, str | None, dict[str, str]]:
    """Kind, sentence and context for an exception of the ollama package (or httpx beneath it)."""
    if isinstance(exc, ollama.ResponseError):
        status, words = exc.status_code, detail.lower()
        if status == 404 or ("not found" in words and "model" in words):
            return ErrorKind.MODEL_NOT_FOUND, "error.ollama_model_not_found", {}
        if status in (401, 403):
            return ErrorKind.AUTH, None, {}
        if status == 429:
            after = getattr(exc, "retry_after", None)
            if after:
                return ErrorKind.RATE_LIMITED, None, {"retry_after": after}
            return ErrorKind.RATE_LIMITED, "error.rate_limited_wait", {}
        if "context" in words:
            return ErrorKind.CONTEXT_TOO_LONG, None, {}
        if "does not support chat" in words or "does not support generate" in words:
            return ErrorKind.BAD_REQUEST, "error.not_chat_model", {}
        if status in (400, 422):
            return ErrorKind.BAD_REQUEST, None, {}
        return ErrorKind.SERVER, None, {}
    if isinstance(exc, httpx.TimeoutException):
        return ErrorKind.TIMEOUT, None, {}
    if isinstance(exc, ConnectionError | httpx.TransportError):
        hint = "error.interrupted" if partial else "error.ollama_connection"
        return ErrorKind.CONNECTION, hint, {}
    return ErrorKind.SERVER, "error.unexpected", {}


def _usage(final: Any) -> Usage:
    return Usage(
        input_tokens=final.prompt_eval_count or 0,
        output_tokens=final.eval_count or 0,
    )
