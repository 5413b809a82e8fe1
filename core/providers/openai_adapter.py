"""OpenAI, Azure OpenAI and any OpenAI-compatible /v1 server, on the official `openai` package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import openai

from core import aio
from core.config import mask_url
from core.providers.base import (
    ErrorKind,
    Event,
    Facts,
    Message,
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
        proxy: str | None = None,
    ) -> None:
        self._api_key = api_key
        self._fixed_models = models
        self.is_azure = azure_endpoint is not None
        # A missing key would make the SDK raise at construction; let the server say 401 instead,
        # as keyless local servers (vLLM, LM Studio, llama.cpp) accept any key.
        key = api_key or "none"
        target = azure_endpoint or base_url or "https://api.openai.com/v1"
        # Our own proxy decision (loopback and NO_PROXY direct), not httpx's reading of the env.
        http_client = openai.DefaultAsyncHttpxClient(proxy=proxy_for(target, proxy),
                                                     trust_env=False)
        if self.is_azure:
            self.client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                api_key=key,
                azure_endpoint=azure_endpoint,
                api_version=api_version,
                timeout=timeout,
                max_retries=max_retries,
                http_client=http_client,
            )
        else:
            self.client = openai.AsyncOpenAI(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                http_client=http_client,
            )
        self.url = mask_url(str(self.client.base_url).rstrip("/"))
        self.is_openai = (urlparse(self.url).hostname or "") == "api.openai.com"
        # What the endpoint accepts (not per-call state): False once it refused stream_options.
        self.stream_options = True

    @property
    def base_url(self) -> str:
        """Where requests go, without credentials."""
        return self.url

    def models(self) -> list[str]:
        """Chat model ids: the configured list if any (Azure deployments), else the server's
        less those whose names say they cannot chat."""
        if self._fixed_models:
            return list(self._fixed_models)
        try:
            ids = sorted(aio.run(self._list_models()))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self.error(exc) from None
        # Out of the picker, still typeable: the model box accepts any name.
        return [i for i in ids if (is_chat_model if self.is_openai else looks_like_chat)(i)]

    async def _list_models(self) -> list[str]:
        return [m.id async for m in self.client.models.list()]

    def _request(self, model: str, messages: list[Message], params: Params) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }
        if self.stream_options:
            body["stream_options"] = {"include_usage": True}
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

    async def _events(
        self, model: str, messages: list[Message], params: Params
    ) -> AsyncIterator[Event]:
        body = self._request(model, messages, params)
        try:
            stream = await self.client.chat.completions.create(**body)
        except openai.BadRequestError as exc:
            # Azure api-versions before 2024-09-01 reject stream_options: ask again without it
            # (usage is then estimated and flagged), and remember it for this endpoint.
            if "stream_options" not in body or "stream_options" not in str(exc.message):
                raise
            self.stream_options = False
            del body["stream_options"]
            stream = await self.client.chat.completions.create(**body)
        seen_model = False
        async with stream:  # closes the response however the loop ends, cancellation included
            async for chunk in stream:
                if not seen_model and chunk.model:  # Azure's first chunk has model ""
                    seen_model = True
                    yield Facts(server_model=chunk.model)
                if chunk.usage is not None:
                    yield Facts(usage=_usage(chunk.usage), complete=True)
                # Azure's first chunk and the usage chunk carry no choices: normal.
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.model_extra:
                        reasoning = _reasoning(delta.model_extra)
                        if reasoning:
                            yield Thinking(reasoning)
                    if delta.content:
                        yield delta.content
                    if choice.finish_reason:
                        yield Facts(finish_reason=choice.finish_reason, complete=True)

    def _classify(self, exc: Exception, *, model: str, partial: bool) -> ProviderError:
        detail = redact(_server_message(exc), (self._api_key,))
        kind, hint, extra = _classify(exc, detail, partial)
        status = getattr(exc, "status_code", None)
        return ProviderError(kind, detail, hint=hint, model=model, url=self.url,
                             http_status=status if isinstance(status, int) else None,
                             request_id=getattr(exc, "request_id", None), **extra)

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._api_key,)


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
        after = exc.response.headers.get("retry-after")
        if after:
            return ErrorKind.RATE_LIMITED, None, {"retry_after": after}
        return ErrorKind.RATE_LIMITED, "error.rate_limited_wait", {}
    if "context_length" in words or "context length" in words or "too long" in words:
        return ErrorKind.CONTEXT_TOO_LONG, None, {}
    if "content_filter" in words or "content management policy" in words:
        return ErrorKind.CONTENT_FILTER, None, {}
    if status in (400, 404) and any(w in words for w in _NOT_CHAT_SAYINGS):
        return ErrorKind.BAD_REQUEST, "error.not_chat_model", {}
    if status in (400, 404) and ("model" in words or "deployment" in words) \
            and _says_missing(words):
        return ErrorKind.MODEL_NOT_FOUND, None, {}
    if status == 404:
        return ErrorKind.BAD_REQUEST, "error.wrong_path", {}
    if isinstance(exc, openai.APIStatusError) and status is not None and status < 500:
        return ErrorKind.BAD_REQUEST, None, {}
    if isinstance(exc, openai.APIError):
        return ErrorKind.SERVER, None, {}
    # Not the SDK's: a proxy answering HTML, a broken JSON line, a bug of ours.
    return ErrorKind.SERVER, "error.unexpected", {}


# How OpenAI, vLLM and others refuse a chat with an image, embedding or audio model.
_NOT_CHAT_SAYINGS = ("not a chat model", "does not support chat", "chat completions api",
                     "not supported in the v1/chat/completions")


def _says_missing(words: str) -> bool:
    return any(w in words for w in ("not found", "not exist", "does not exist", "model_not_found",
                                    "no such", "unknown model", "invalid model",
                                    "deploymentnotfound"))


def _server_message(exc: Exception) -> str:
    """The server's words by `server_words`' rule; the SDK's own sentence for a failure with
    no response (connection, timeout); only the exception's name for anything else, whose
    text may quote a page (a JSON or validation error prints what it could not read)."""
    if isinstance(exc, openai.APIConnectionError):
        return exc.message
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIResponseValidationError):
        return server_words(exc.body)  # an error response, or an error event mid-stream
    return type(exc).__name__


def _reasoning(extra: dict[str, Any]) -> str:
    # DeepSeek, Qwen, vLLM and others send `reasoning_content`; OpenRouter sends `reasoning`.
    # The SDK does not declare them: they sit in model_extra (getattr would raise inside
    # pydantic on every chunk, most of the adapter's cost per chunk).
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
