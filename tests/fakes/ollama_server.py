"""Fake Ollama server (/api/chat, tags, show, pull, ps, version) with faults on demand."""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Unpack

from tests.fakes.common import (
    CLEAN_CUTS,
    COMMON_FAULTS,
    FakeHandler,
    FakeServer,
    ReplyPlan,
    ServerSettings,
    dumps,
    emit_tokens,
    estimate_prompt_tokens,
    jstr,
    make_plan,
    rfc3339,
    run_standalone,
    server_from_args,
)

VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
MODIFIED_AT = "2025-06-01T12:00:00.000000000Z"
# A warm model still reports a little load time; the fake adds this constant.
LOAD_NS = 1_000_000
KEEP_ALIVE_S = 300
OLLAMA_FAULTS: tuple[str, ...] = (
    *COMMON_FAULTS,
    "429-after",  # a 429 that says when to retry (Retry-After: 30), as a proxy in front may
)
ERROR_500 = "llama runner process has terminated: exit status 2"
ERROR_429 = "too many requests, please try again later"
ERROR_CONTEXT = "input length exceeds maximum context length"
ERROR_STREAM = "an error was encountered while running the model: unexpected EOF"
ERROR_PULL_MISSING = "pull model manifest: file does not exist"


def normalize(name: str) -> str:
    """Ollama's canonical name: a missing tag means ":latest"."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass(frozen=True)
class OllamaModel:
    """One installed model and the facts /api/tags, /api/show and /api/ps report."""

    name: str
    family: str = "llama"
    parameter_size: str = "1.2B"
    parameter_count: int = 1_235_814_432
    quantization_level: str = "Q8_0"
    size: int = 1_321_098_329
    context_length: int = 131_072
    thinking: bool = False
    embedding: bool = False  # an embedding model: /api/chat refuses it

    @property
    def digest(self) -> str:
        """Deterministic fake sha256 of the model manifest."""
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def details(self) -> dict[str, Any]:
        """The "details" object."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    @property
    def capabilities(self) -> list[str]:
        """Capabilities reported by /api/show."""
        if self.embedding:
            return ["embedding"]
        return ["completion", "thinking"] if self.thinking else ["completion"]


BUILTIN_MODELS: tuple[OllamaModel, ...] = (
    OllamaModel("llama3.2:1b"),
    OllamaModel(
        "qwen3:0.6b",
        family="qwen3",
        parameter_size="751.63M",
        parameter_count=751_632_384,
        quantization_level="Q4_K_M",
        size=522_653_767,
        context_length=40_960,
        thinking=True,
    ),
    OllamaModel(
        "nomic-embed-text:latest",
        family="nomic-bert",
        parameter_size="137M",
        parameter_count=136_727_040,
        quantization_level="F16",
        size=274_302_450,
        context_length=2048,
        embedding=True,
    ),
)


class FakeOllamaServer(FakeServer):
    """Local server speaking the Ollama REST API."""

    FAULTS: ClassVar[tuple[str, ...]] = OLLAMA_FAULTS

    def __init__(self, **settings: Unpack[ServerSettings]) -> None:
        super().__init__(**settings)
        self.models: dict[str, OllamaModel] = {m.name: m for m in BUILTIN_MODELS}
        for name in self.fault_models():
            full = normalize(name)
            self.models[full] = OllamaModel(full, thinking=full == "fault-reasoning:latest")
        # Model name -> time of last use, for /api/ps.
        self.loaded: dict[str, float] = {}

    # -- routing -----------------------------------------------------------------------

    def dispatch(self, handler: FakeHandler) -> None:
        """Route the Ollama endpoints; anything else is gin's plain-text 404."""
        path = handler.path.partition("?")[0]
        route = (handler.command, path)
        if route in (("GET", "/"), ("HEAD", "/")):
            handler.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif route == ("GET", "/api/version"):
            handler.send_json(200, {"version": VERSION})
        elif route == ("GET", "/api/tags"):
            handler.send_json(200, {"models": [self._tag(m) for m in list(self.models.values())]})
        elif route == ("GET", "/api/ps"):
            handler.send_json(200, {"models": self._ps()})
        elif route == ("POST", "/api/show"):
            self._show(handler)
        elif route == ("POST", "/api/pull"):
            self._pull(handler)
        elif route == ("DELETE", "/api/delete"):
            self._delete(handler)
        elif route == ("POST", "/api/chat"):
            self._chat(handler)
        else:
            handler.send_bytes(404, b"404 page not found", "text/plain")

    def _body(self, handler: FakeHandler) -> dict[str, Any] | None:
        """The JSON object body, or None after replying 400."""
        try:
            body = handler.json_body()
        except ValueError:
            body = None
        if isinstance(body, dict):
            return body
        handler.send_json(400, {"error": "invalid character in request body"})
        return None

    @staticmethod
    def _name(body: dict[str, Any]) -> str:
        # The clients send "model"; older ones send "name".
        name = body.get("model") or body.get("name") or ""
        return name if isinstance(name, str) else ""

    # -- model management --------------------------------------------------------------

    def _tag(self, model: OllamaModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": MODIFIED_AT,
            "size": model.size,
            "digest": model.digest,
            "details": model.details,
        }

    def _ps(self) -> list[dict[str, Any]]:
        out = []
        for name, used in list(self.loaded.items()):
            model = self.models.get(name)
            if model is None:
                continue
            expires = int((used + KEEP_ALIVE_S) * 1e9)
            out.append(
                {
                    **self._tag(model),
                    "expires_at": rfc3339(expires),
                    "size_vram": model.size,
                    "context_length": 4096,
                }
            )
        return out

    def _show(self, handler: FakeHandler) -> None:
        body = self._body(handler)
        if body is None:
            return
        name = self._name(body)
        model = self.models.get(normalize(name)) if name else None
        if model is None:
            handler.send_json(404, {"error": f"model '{name}' not found"})
            return
        family = model.family
        handler.send_json(
            200,
            {
                "license": "Fake license for tests.",
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.name}\n',
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}",
                "details": model.details,
                "model_info": {
                    "general.architecture": family,
                    "general.parameter_count": model.parameter_count,
                    "general.file_type": 7,
                    f"{family}.context_length": model.context_length,
                    f"{family}.embedding_length": 2048,
                    f"{family}.block_count": 16,
                },
                "capabilities": model.capabilities,
                "modified_at": MODIFIED_AT,
            },
        )

    def _delete(self, handler: FakeHandler) -> None:
        body = self._body(handler)
        if body is None:
            return
        name = self._name(body)
        if self.models.pop(normalize(name), None) is None:
            handler.send_json(404, {"error": f"model '{name}' not found"})
            return
        self.loaded.pop(normalize(name), None)
        handler.send_bytes(200, b"", "application/json; charset=utf-8")

    def _pull(self, handler: FakeHandler) -> None:
        body = self._body(handler)
        if body is None:
            return
        name = self._name(body)
        if not name:
            handler.send_json(400, {"error": "invalid model name"})
            return
        full = normalize(name)
        missing = full.rsplit("/", 1)[-1].startswith("missing")
        model = self.models.get(full) or OllamaModel(
            full, size=1_000_000_000 + int(hashlib.sha256(full.encode()).hexdigest()[:6], 16)
        )
        steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if missing:
            steps.append({"error": ERROR_PULL_MISSING})
        else:
            total, digest = model.size, model.digest
            for k in range(5):
                steps.append(
                    {
                        "status": f"pulling {digest[:12]}",
                        "digest": f"sha256:{digest}",
                        "total": total,
                        "completed": total * k // 4,
                    }
                )
            steps += [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
        pacer = self.pacer(None, handler)
        if body.get("stream", True) is False:
            # Non-streaming pulls answer once at the end; errors become a 500 like Ollama's.
            if missing:
                handler.send_json(500, {"error": ERROR_PULL_MISSING})
                return
            self.models[full] = model
            handler.send_json(200, {"status": "success"})
            return
        handler.begin_stream(200, NDJSON)
        for i, step in enumerate(steps):
            pacer.wait(i)
            handler.write_chunk(dumps(step) + b"\n")
        if not missing:
            self.models[full] = model
        handler.end_stream()

    # -- chat --------------------------------------------------------------------------

    def _chat(self, handler: FakeHandler) -> None:
        body = self._body(handler)
        if body is None:
            return
        self.record(handler, body)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            handler.send_json(400, {"error": "model is required"})
            return
        model = self.models.get(normalize(name))
        if model is None:
            handler.send_json(404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        if model.embedding:
            handler.send_json(400, {"error": f'"{name}" does not support chat'})
            return
        fault = self.resolve_fault(name)
        think = body.get("think")
        wants_thinking = bool(think) and think not in ("false", "none")
        if wants_thinking and not model.thinking and not name.startswith("fault-"):
            handler.send_json(400, {"error": f'"{name}" does not support thinking'})
            return
        if fault == "429":
            handler.send_json(429, {"error": ERROR_429})
            return
        if fault == "429-after":
            handler.send_json(429, {"error": ERROR_429}, {"Retry-After": "30"})
            return
        if fault == "500":
            handler.send_json(500, {"error": ERROR_500})
            return
        if fault == "context":
            handler.send_json(400, {"error": ERROR_CONTEXT})
            return
        messages = body.get("messages") or []
        options = body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        thinking = fault == "reasoning" or (wants_thinking and model.thinking)
        plan = make_plan(messages, self.tokens, limit, fault, thinking)
        self.loaded[model.name] = time.time()
        prompt_count = estimate_prompt_tokens(messages)
        if body.get("stream", True) is False:
            self._complete(handler, name, plan, fault, prompt_count)
        else:
            self._stream(handler, name, plan, fault, prompt_count)

    def _counters(
        self, handler: FakeHandler, first: float, end: float, prompt_count: int, eval_count: int
    ) -> dict[str, Any]:
        """Final-line timings in nanoseconds, measured from the real elapsed time."""
        prompt_ns = max(1, int((first - handler.started) * 1e9))
        eval_ns = max(1, int((end - first) * 1e9))
        return {
            "total_duration": LOAD_NS + prompt_ns + eval_ns,
            "load_duration": LOAD_NS,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count,
            "eval_duration": eval_ns,
        }

    def _complete(
        self, handler: FakeHandler, name: str, plan: ReplyPlan, fault: str | None, prompt_count: int
    ) -> None:
        """Non-streaming chat: one JSON object."""
        first = self.simulate_generation(plan, fault)
        if fault == "stream-error":
            handler.send_json(500, {"error": ERROR_STREAM})
            return
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.thinking:
            message["thinking"] = "".join(plan.thinking)
        obj = {
            "model": name,
            "created_at": rfc3339(),
            "message": message,
            "done_reason": plan.finish_reason,
            "done": True,
            **self._counters(handler, first, time.monotonic(), prompt_count, plan.total),
        }
        data = dumps(obj)
        truncate = len(data) // 2 if fault == "disconnect" else None
        handler.send_bytes(200, data, "application/json; charset=utf-8", truncate=truncate)

    def _stream(
        self, handler: FakeHandler, name: str, plan: ReplyPlan, fault: str | None, prompt_count: int
    ) -> None:
        """NDJSON stream: one line per token, then the done line with counters."""
        # Ollama sends its headers with the first token, so the "slow" wait comes before them.
        pacer = self.pacer(fault, handler)
        first = time.monotonic()
        pre = '{"model":' + jstr(name) + ',"created_at":"'
        content_mid = '","message":{"role":"assistant","content":'
        think_mid = '","message":{"role":"assistant","content":"","thinking":'
        post = '},"done":false}\n'

        def encode_content(tok: str) -> bytes:
            return (pre + rfc3339() + content_mid + jstr(tok) + post).encode()

        def encode_thinking(tok: str) -> bytes:
            return (pre + rfc3339() + think_mid + jstr(tok) + post).encode()

        handler.begin_stream(200, NDJSON, until_close=fault == "cut-close")
        sent = emit_tokens(handler, plan, pacer, encode_thinking, encode_content)
        if plan.cut is not None:
            if fault == "disconnect":
                handler.abort()
                return
            if fault in CLEAN_CUTS:
                handler.end_stream()  # no done line
                return
            # Ollama reports failures after the headers as an {"error": ...} line.
            handler.write_chunk(dumps({"error": ERROR_STREAM}) + b"\n")
            handler.end_stream()
            return
        final = {
            "model": name,
            "created_at": rfc3339(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": plan.finish_reason,
            "done": True,
            **self._counters(handler, first, time.monotonic(), prompt_count, sent),
        }
        handler.write_chunk(dumps(final) + b"\n")
        handler.end_stream()


def add_ollama_args(parser: argparse.ArgumentParser, flag: str = "--port") -> None:
    """CLI options of the Ollama fake."""
    parser.add_argument(flag, type=int, default=11435)


def ollama_from_args(args: argparse.Namespace, port: int) -> FakeOllamaServer:
    """Build the Ollama fake from parsed CLI options."""
    return server_from_args(FakeOllamaServer, args, port)


def ollama_banner(server: FakeOllamaServer) -> list[str]:
    """How to point the app / the ollama client at this server."""
    return [
        f"Fake Ollama on {server.url}",
        f"  export OLLAMA_HOST={server.url}",
        f"  models: {', '.join(m.name for m in BUILTIN_MODELS)}",
        f"  fault models: {', '.join(server.fault_models())}",
    ]


def main(argv: list[str] | None = None) -> None:
    """Run the Ollama fake alone until Ctrl-C."""
    prog = "python -m tests.fakes.ollama_server"
    run_standalone(prog, add_ollama_args, ollama_from_args, ollama_banner, argv)


if __name__ == "__main__":
    main()
