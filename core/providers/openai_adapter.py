"""OpenAI, Azure OpenAI and any OpenAI-compatible /v1 server, on the official `openai` package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import openai

from core.providers.base import (
    ErrorKind,
    Message,
    Params,
    Provider,
    ProviderError,
    Reply,
    Usage,
    redact,
)

# Reasoning models can think for minutes before the first token; connecting should be quick.
TIMEOUT = openai.Timeout(connect=10.0, read=300.0, write=30.0, pool=10.0)
MAX_RETRIES = 1

_NOT_CHAT = ("embedding", "tts", "whisper", "dall-e", "image", "audio", "realtime",
             "transcribe", "moderation", "search", "computer-use", "babbage", "davinci")


def is_chat_model(model_id: str) -> bool:
    """On api.openai.com, /models lists every model; only these can chat."""
    name = model_id.lower()
    chat_family = name.startswith(("gpt-", "o1", "o3", "o4", "chatgpt-", "ft:gpt-"))
    return chat_family and not any(part in name for part in _NOT_CHAT)


class OpenAIProvider(Provider):
    """One OpenAI-protocol endpoint; the client is built once and reused for its connections."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        models: tuple[str, ...] = (),
        timeout: openai.Timeout = TIMEOUT,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self._api_key = api_key
        self._fixed_models = models
        self.is_azure = azure_endpoint is not None
        # A missing key would make the SDK raise at construction; let the server say 401 instead,
        # as keyless local servers (vLLM, LM Studio, llama.cpp) accept any key.
        key = api_key or "none"
        if self.is_azure:
            self.client: openai.OpenAI = openai.AzureOpenAI(
                api_key=key,
                azure_endpoint=azure_endpoint,
                api_version=api_version,
                timeout=timeout,
                max_retries=max_retries,
            )
        else:
            self.client = openai.OpenAI(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
            )
        host = urlparse(str(self.client.base_url)).hostname or ""
        self.is_openai = host == "api.openai.com"

    def models(self) -> list[str]:
        """Chat model ids: the configured list if any (Azure deployments), else the server's."""
        if self._fixed_models:
            return list(self._fixed_models)
        try:
            ids = sorted(m.id for m in self.client.models.list())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self.error(exc) from None
        return [i for i in ids if is_chat_model(i)] if self.is_openai else ids

    def stream(self, model: str, messages: list[Message], params: Params) -> Reply:
        """Start a streamed chat completion; the request goes out on first iteration."""
        reply = Reply(messages)
        holder: dict[str, Any] = {}

        def close() -> None:
            if "stream" in holder:
                holder["stream"].close()

        return reply.attach(self._deltas(model, messages, params, reply, holder), close)

    def _request(self, model: str, messages: list[Message], params: Params) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.max_tokens is not None:
            # OpenAI's reasoning models refuse max_tokens; most compatible servers only know it.
            limit = "max_completion_tokens" if self.is_openai or self.is_azure else "max_tokens"
            body[limit] = params.max_tokens
        return body

    def _deltas(
        self,
        model: str,
        messages: list[Message],
        params: Params,
        reply: Reply,
        holder: dict[str, Any],
    ) -> Iterator[str]:
        with reply.streaming():  # times the stream and settles it, however it ends
            try:
                body = self._request(model, messages, params)
                stream = self.client.chat.completions.create(**body)
                holder["stream"] = stream
                push = reply.push  # the loop runs once per token: keep it lean
                with stream:
                    for chunk in stream:
                        if reply.stopping:
                            return
                        if chunk.usage is not None:
                            reply.usage = _usage(chunk.usage)
                        # Azure's first chunk and the usage chunk carry no choices: normal.
                        for choice in chunk.choices:
                            if choice.finish_reason:
                                reply.finish_reason = choice.finish_reason
                            delta = choice.delta
                            reasoning = _reasoning(delta)
                            if delta.content or reasoning:
                                yield push(delta.content or "", reasoning)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
                raise self.error(exc, model=model, partial=bool(reply.text)) from None
            if reply.finish_reason == "content_filter":
                raise ProviderError(ErrorKind.CONTENT_FILTER, model=model, url=self.base_url)

    def error(self, exc: Exception, *, model: str = "", partial: bool = False) -> ProviderError:
        """The SDK's exception as a ProviderError, with the server's words and no key."""
        if isinstance(exc, ProviderError):
            return exc
        detail = redact(_server_message(exc), (self._api_key,))
        kind, hint, extra = _classify(exc, detail, partial)
        return ProviderError(kind, detail, hint=hint, model=model or "?", url=self.base_url,
                             **extra)

    @property
    def base_url(self) -> str:
        """Where requests go, without credentials."""
        return str(self.client.base_url).rstrip("/")


def _classify(
    exc: Exception, detail: str, partial: bool
) -> tuple[ErrorKind, str | None, dict[str, str]]:
    """Kind, sentence and extra context for an exception of the openai package (or another)."""
    status = getattr(exc, "status_code", None)
    words = f"{getattr(exc, 'code', '') or ''} {detail}".lower()
    if isinstance(exc, openai.APITimeoutError):
        return ErrorKind.TIMEOUT, None, {}
    if isinstance(exc, openai.APIConnectionError):
        return ErrorKind.CONNECTION, "error.interrupted" if partial else None, {}
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ErrorKind.AUTH, None, {}
    if isinstance(exc, openai.RateLimitError):
        if "quota" in words:
            return ErrorKind.RATE_LIMITED, "error.quota", {}
        return ErrorKind.RATE_LIMITED, None, {
            "retry_after": exc.response.headers.get("retry-after") or "?"}
    if "context_length" in words or "context length" in words or "too long" in words:
        return ErrorKind.CONTEXT_TOO_LONG, None, {}
    if "content_filter" in words or "content management policy" in words:
        return ErrorKind.CONTENT_FILTER, None, {}
    if status in (400, 404) and "model" in words and _says_missing(words):
        return ErrorKind.MODEL_NOT_FOUND, None, {}
    if status == 404:
        return ErrorKind.BAD_REQUEST, "error.wrong_path", {}
    if isinstance(exc, openai.APIStatusError) and status is not None and status < 500:
        return ErrorKind.BAD_REQUEST, None, {}
    if isinstance(exc, openai.APIError):
        return ErrorKind.SERVER, None, {}
    # Not the SDK's: a proxy answering HTML, a broken JSON line, a bug of ours.
    return ErrorKind.SERVER, "error.unexpected", {}


def _says_missing(words: str) -> bool:
    return any(w in words for w in ("not found", "not exist", "does not exist", "model_not_found",
                                    "no such", "unknown model", "invalid model"))


def _server_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)
    return str(exc)


def _reasoning(delta: Any) -> str:
    # DeepSeek, Qwen, vLLM and others send `reasoning_content`; OpenRouter sends `reasoning`.
    # The SDK does not declare them: they sit in model_extra (getattr would raise inside
    # pydantic on every chunk, most of the adapter's cost per chunk).
    extra = delta.model_extra
    if not extra:
        return ""
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _usage(raw: Any) -> Usage:
    prompt_details = getattr(raw, "prompt_tokens_details", None)
    output_details = getattr(raw, "completion_tokens_details", None)
    cached = getattr(prompt_details, "cached_tokens", None)
    if cached is None:  # DeepSeek reports its cache hits this way
        cached = getattr(raw, "prompt_cache_hit_tokens", None)
    return Usage(
        input_tokens=raw.prompt_tokens or 0,
        cached_input_tokens=cached or 0,
        output_tokens=raw.completion_tokens or 0,
        reasoning_tokens=getattr(output_details, "reasoning_tokens", None) or 0,
    )
