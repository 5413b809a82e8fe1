"""Fake OpenAI chat-completions server (also Azure OpenAI paths) with faults on demand."""

from __future__ import annotations

import argparse
import secrets
import time
from typing import Any, ClassVar, Unpack
from urllib.parse import parse_qs, unquote

from tests.fakes.common import (
    CLEAN_CUTS,
    COMMON_FAULTS,
    FAULT_PREFIX,
    FakeHandler,
    FakeServer,
    Pacer,
    ReplyPlan,
    ServerSettings,
    dumps,
    emit_tokens,
    estimate_prompt_tokens,
    jstr,
    make_plan,
    run_standalone,
    server_from_args,
    total_chars,
)

CHAT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "deepseek-reasoner")
# Listed by /v1/models like the real API, but rejected by chat completions.
NON_CHAT_MODELS: tuple[str, ...] = ("text-embedding-3-small", "dall-e-3", "whisper-1", "tts-1")
# Models that always stream `reasoning_content` first, like DeepSeek's reasoner.
REASONING_MODELS: tuple[str, ...] = ("deepseek-reasoner",)
OPENAI_FAULTS: tuple[str, ...] = (
    *COMMON_FAULTS,
    "no-usage",
    "azure",
    "content-filter",  # half the answer, then finish_reason "content_filter"
    "old-azure",  # an older Azure api-version: rejects stream_options with a 400
    "slow-headers",  # the "slow" wait before the response headers rather than after them
)
# What Azure answers an api-version older than 2024-09-01 that is sent stream_options.
AZURE_STREAM_OPTIONS_MESSAGE = "Unrecognized request argument supplied: stream_options"
MODEL_OWNERS: dict[str, tuple[str, int]] = {
    "gpt-4o-mini": ("system", 1721172741),
    "gpt-4o": ("system", 1715367049),
    "deepseek-reasoner": ("deepseek", 1737331200),
    "text-embedding-3-small": ("system", 1705948997),
    "dall-e-3": ("system", 1698785189),
    "whisper-1": ("openai-internal", 1677532384),
    "tts-1": ("openai-internal", 1681940951),
}
CONTEXT_TOKENS = 128_000
# Real context check: above this many characters a request is "too long"; a 200,000-char
# message must still pass, so the limit implies ~3 characters per token.
MAX_CONTEXT_CHARS = 400_000
FINGERPRINT = "fp_fake0000001"

KEY_URL = "https://platform.openai.com/account/api-keys"
NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    f"a username and password. You can obtain an API key from {KEY_URL}."
)
AZURE_AUTH_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
_SAFE = {"filtered": False, "severity": "safe"}
# Azure's per-choice and per-prompt content-filter annotations.
CONTENT_FILTER_RESULTS: dict[str, Any] = {
    "hate": _SAFE,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
PROMPT_FILTER_RESULTS: list[dict[str, Any]] = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **CONTENT_FILTER_RESULTS,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mask_key(key: str) -> str:
    """Mask an API key the way OpenAI echoes it in 401 messages."""
    return key[:5] + "***" + (key[-4:] if len(key) >= 20 else "")


def context_error(tokens: int) -> dict[str, Any]:
    """The 400 body for a prompt longer than the context window."""
    return error_body(
        f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, your "
        f"messages resulted in {tokens} tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    )


def usage_body(prompt_tokens: int, thinking: int, content: int, cached: int = 0) -> dict[str, Any]:
    """Usage object as sent by the real API."""
    completion = thinking + content
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": thinking,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class FakeOpenAIServer(FakeServer):
    """Local server speaking the OpenAI chat-completions wire format."""

    FAULTS: ClassVar[tuple[str, ...]] = OPENAI_FAULTS
    URL_SUFFIX: ClassVar[str] = "/v1"

    def __init__(self, api_key: str | None = "sk-test", cached_tokens: int = 0,
                 **settings: Unpack[ServerSettings]) -> None:
        super().__init__(**settings)
        self.api_key = api_key
        self.cached_tokens = cached_tokens  # reported as prompt_tokens_details.cached_tokens

    def model_ids(self) -> list[str]:
        """Every model id listed by /v1/models."""
        return [*MODEL_OWNERS, *self.fault_models()]

    # -- routing -----------------------------------------------------------------------

    def dispatch(self, handler: FakeHandler) -> None:
        """Route /v1/..., Azure /openai/deployments/{name}/... and /openai/v1/... paths."""
        path, _, query = handler.path.partition("?")
        method = handler.command
        azure = path.startswith("/openai/")
        if path.startswith("/openai/v1/"):
            rest = path[len("/openai") :]
        elif azure:
            rest = path[len("/openai") :]
            if "api-version" not in parse_qs(query):
                # Azure's classic API needs ?api-version=; without it the route does not exist.
                missing = {"error": {"code": "404", "message": "Resource not found"}}
                self._send(handler, 404, missing)
                return
            rest = "/v1" + rest
        else:
            rest = path
        if not self._authorized(handler, azure):
            return
        parts = rest.strip("/").split("/")
        if method == "GET" and rest == "/v1/models":
            self._send(handler, 200, {"object": "list", "data": self._models()})
        elif method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "models"]:
            self._retrieve_model(handler, unquote(parts[2]))
        elif method == "POST" and rest == "/v1/chat/completions":
            self._chat(handler, None, azure)
        elif (
            method == "POST"
            and len(parts) == 5
            and parts[:2] == ["v1", "deployments"]
            and parts[3:] == ["chat", "completions"]
        ):
            self._chat(handler, unquote(parts[2]), azure)
        else:
            message = f"Invalid URL ({method} {path})"
            self._send(handler, 404, error_body(message, "invalid_request_error"))

    def _send(
        self, handler: FakeHandler, status: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        # x-request-id is what openai.APIStatusError.request_id reads.
        extra = {"x-request-id": "req_" + secrets.token_hex(16), **(headers or {})}
        handler.send_json(status, obj, extra)

    def _authorized(self, handler: FakeHandler, azure: bool) -> bool:
        if self.api_key is None:
            return True
        key = handler.headers.get("api-key")
        auth = handler.headers.get("Authorization", "")
        if key is None and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        if key == self.api_key:
            return True
        if azure:
            body: dict[str, Any] = {"error": {"code": "401", "message": AZURE_AUTH_MESSAGE}}
        elif not key:
            body = error_body(NO_KEY_MESSAGE, "invalid_request_error")
        else:
            body = error_body(
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                f"{KEY_URL}.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
        if handler.path.split("?")[0].endswith("/chat/completions"):
            # Record rejected chats too: tests assert on the headers that were sent.
            try:
                self.record(handler, handler.json_body())
            except ValueError:
                self.record(handler, None)
        self._send(handler, 401, body)
        return False

    # -- models ------------------------------------------------------------------------

    def _model_obj(self, model_id: str) -> dict[str, Any]:
        owner, created = MODEL_OWNERS.get(model_id, ("fake", 1700000000))
        return {"id": model_id, "object": "model", "created": created, "owned_by": owner}

    def _models(self) -> list[dict[str, Any]]:
        return [self._model_obj(m) for m in self.model_ids()]

    def _retrieve_model(self, handler: FakeHandler, model_id: str) -> None:
        if model_id in self.model_ids():
            self._send(handler, 200, self._model_obj(model_id))
            return
        body = error_body(
            f"The model '{model_id}' does not exist",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
        self._send(handler, 404, body)

    # -- chat --------------------------------------------------------------------------

    def _chat(self, handler: FakeHandler, deployment: str | None, azure: bool) -> None:
        try:
            body = handler.json_body()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)"
            )
            self._send(handler, 400, error_body(message, "invalid_request_error"))
            return
        self.record(handler, body)
        model = deployment or body.get("model")
        if not isinstance(model, str) or not model:
            message = "you must provide a model parameter"
            self._send(handler, 400, error_body(message, "invalid_request_error"))
            return
        error = self._request_error(body, model, deployment)
        if error is not None:
            self._send(handler, *error)
            return
        messages = body["messages"]
        fault = self.resolve_fault(model)
        if fault == "old-azure" and "stream_options" in body:
            body400 = error_body(AZURE_STREAM_OPTIONS_MESSAGE, "invalid_request_error")
            self._send(handler, 400, body400)
            return
        if fault == "429":
            message = (
                f"Rate limit reached for {model} in organization org-fake on requests per min "
                "(RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            body429 = error_body(message, "requests", None, "rate_limit_exceeded")
            self._send(handler, 429, body429, {"Retry-After": "1"})
            return
        if fault == "500":
            self._send(handler, 500, error_body(SERVER_ERROR_MESSAGE, "server_error"))
            return
        if fault == "context":
            self._send(handler, 400, context_error(200_000))
            return
        chars = total_chars(messages)
        if chars > MAX_CONTEXT_CHARS:
            self._send(handler, 400, context_error(chars // 3))
            return
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        thinking = fault == "reasoning" or model in REASONING_MODELS
        plan = make_plan(messages, self.tokens, limit, fault, thinking)
        reply = _Reply(
            model=model,
            plan=plan,
            fault=fault,
            azure=azure or fault in ("azure", "old-azure"),
            prompt_tokens=estimate_prompt_tokens(messages),
        )
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self._stream(handler, reply, include_usage and fault != "no-usage")
        else:
            self._complete(handler, reply)

    def _request_error(
        self, body: dict[str, Any], model: str, deployment: str | None
    ) -> tuple[int, dict[str, Any]] | None:
        """Validation errors the real API reports before generating anything."""
        if model not in CHAT_MODELS and not model.startswith(FAULT_PREFIX):
            if deployment is not None:
                message = (
                    "The API deployment for this resource does not exist. If you created the "
                    "deployment within the last 5 minutes, please wait a moment and try again."
                )
                return 404, {"error": {"code": "DeploymentNotFound", "message": message}}
            if model in NON_CHAT_MODELS:
                message = (
                    "This is not a chat model and thus not supported in the v1/chat/completions "
                    "endpoint. Did you mean to use v1/completions?"
                )
                return 404, error_body(message, "invalid_request_error", "model")
            message = f"The model `{model}` does not exist or you do not have access to it."
            return 404, error_body(message, "invalid_request_error", None, "model_not_found")
        messages = body.get("messages")
        if messages is None:
            message = "Missing required parameter: 'messages'."
            return 400, error_body(
                message, "invalid_request_error", "messages", "missing_required_parameter"
            )
        if not isinstance(messages, list) or not messages:
            message = f"{messages!r} is too short - 'messages'"
            return 400, error_body(message, "invalid_request_error", "messages")
        if body.get("stream_options") is not None and not body.get("stream"):
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            return 400, error_body(message, "invalid_request_error", "stream_options")
        return None

    def _complete(self, handler: FakeHandler, reply: _Reply) -> None:
        """Non-streaming chat.completion."""
        plan, fault = reply.plan, reply.fault
        self.simulate_generation(plan, fault)
        if fault == "stream-error":
            self._send(handler, 500, error_body(SERVER_ERROR_MESSAGE, "server_error"))
            return
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text,
            "refusal": None,
            "annotations": [],
        }
        if plan.thinking:
            message["reasoning_content"] = "".join(plan.thinking)
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
        if reply.azure:
            choice["content_filter_results"] = CONTENT_FILTER_RESULTS
        obj: dict[str, Any] = {
            "id": reply.id,
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [choice],
            "usage": usage_body(reply.prompt_tokens, len(plan.thinking), len(plan.content),
                                self.cached_tokens),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if reply.azure:
            obj["prompt_filter_results"] = PROMPT_FILTER_RESULTS
        if fault == "no-usage":
            del obj["usage"]
        data = dumps(obj)
        truncate = len(data) // 2 if fault == "disconnect" else None
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        handler.send_bytes(200, data, "application/json", headers, truncate=truncate)

    def _stream(self, handler: FakeHandler, reply: _Reply, include_usage: bool) -> None:
        """Server-sent events of chat.completion.chunk objects, then [DONE]."""
        plan, fault = reply.plan, reply.fault
        # Templates are built once per stream; each token only JSON-encodes its own text.
        usage_tail = ',"usage":null' if include_usage else ""
        cfr = ',"content_filter_results":' + dumps(CONTENT_FILTER_RESULTS).decode()
        cfr = cfr if reply.azure else ""
        head = (
            f'data: {{"id":"{reply.id}","object":"chat.completion.chunk",'
            f'"created":{reply.created},"model":{jstr(reply.model)},"service_tier":"default",'
            f'"system_fingerprint":"{FINGERPRINT}","choices":[{{"index":0,"delta":'
        )

        def tail(finish: str | None) -> str:
            reason = jstr(finish) if finish else "null"
            return f',"logprobs":null,"finish_reason":{reason}{cfr}}}]{usage_tail}}}\n\n'

        content_pre = (head + '{"content":').encode()
        null_reasoning = ',"reasoning_content":null' if plan.thinking else ""
        content_post = (null_reasoning + "}" + tail(None)).encode()
        think_pre = (head + '{"content":null,"reasoning_content":').encode()
        think_post = ("}" + tail(None)).encode()

        def encode_content(tok: str) -> bytes:
            return content_pre + jstr(tok).encode() + content_post

        def encode_thinking(tok: str) -> bytes:
            return think_pre + jstr(tok).encode() + think_post

        if fault == "slow-headers":
            Pacer(0, self._stopping, handler.connection).sleep(self.slow_first_token)
        handler.begin_stream(
            200,
            "text/event-stream; charset=utf-8",
            {"x-request-id": "req_" + secrets.token_hex(16), "Cache-Control": "no-cache"},
            until_close=fault == "cut-close",
        )
        write = handler.write_chunk
        if reply.azure:
            # Azure's first event reports the prompt filter and carries no choices at all.
            first = {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": PROMPT_FILTER_RESULTS,
            }
            write(b"data: " + dumps(first) + b"\n\n")
        pacer = self.pacer(fault, handler)
        write((head + '{"role":"assistant","content":"","refusal":null}' + tail(None)).encode())
        sent = emit_tokens(handler, plan, pacer, encode_thinking, encode_content)
        if fault == "empty":
            write(b"data: [DONE]\n\n")
            handler.end_stream()
            return
        if plan.cut is not None:
            if fault == "disconnect":
                handler.abort()
                return
            if fault in CLEAN_CUTS:
                handler.end_stream()  # no finish_reason, no usage, no [DONE]
                return
            # Mid-stream error event, as OpenAI sends when generation fails after starting.
            write(b"data: " + dumps(error_body(SERVER_ERROR_MESSAGE, "server_error")) + b"\n\n")
            handler.end_stream()
            return
        write((head + "{}" + tail(plan.finish_reason)).encode())
        if include_usage:
            thinking, content = plan.sent(sent)
            usage = {
                "id": reply.id,
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
                "choices": [],
                "usage": usage_body(reply.prompt_tokens, thinking, content, self.cached_tokens),
            }
            write(b"data: " + dumps(usage) + b"\n\n")
        write(b"data: [DONE]\n\n")
        handler.end_stream()


class _Reply:
    """Per-request facts shared by the streaming and non-streaming writers."""

    def __init__(
        self, *, model: str, plan: ReplyPlan, fault: str | None, azure: bool, prompt_tokens: int
    ) -> None:
        self.model = model
        self.plan = plan
        self.fault = fault
        self.azure = azure
        self.prompt_tokens = prompt_tokens
        self.id = "chatcmpl-" + secrets.token_hex(14)
        self.created = int(time.time())


def add_openai_args(parser: argparse.ArgumentParser, flag: str = "--port") -> None:
    """CLI options of the OpenAI fake."""
    parser.add_argument(flag, type=int, default=8001)
    parser.add_argument("--api-key", default="sk-test", help="expected key; 'none' accepts any key")


def openai_from_args(args: argparse.Namespace, port: int) -> FakeOpenAIServer:
    """Build the OpenAI fake from parsed CLI options."""
    key = None if args.api_key.lower() in ("", "none") else args.api_key
    return server_from_args(FakeOpenAIServer, args, port, api_key=key)


def openai_banner(server: FakeOpenAIServer) -> list[str]:
    """How to point the app / the openai client at this server."""
    return [
        f"Fake OpenAI API on {server.url}  (Azure endpoint: {server.base_url})",
        f"  export OPENAI_BASE_URL={server.url}",
        f"  export OPENAI_API_KEY={server.api_key or 'sk-anything'}",
        f"  chat models: {', '.join(CHAT_MODELS)}",
        f"  fault models: {', '.join(server.fault_models())}",
    ]


def main(argv: list[str] | None = None) -> None:
    """Run the OpenAI fake alone until Ctrl-C."""
    prog = "python -m tests.fakes.openai_server"
    run_standalone(prog, add_openai_args, openai_from_args, openai_banner, argv)


if __name__ == "__main__":
    main()
