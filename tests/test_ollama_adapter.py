"""The Ollama adapter over real HTTP, against the fake server, with the official client."""

from __future__ import annotations

import pytest

from core.providers import ErrorKind, Message, OllamaProvider, Params, ProviderError
from tests.fakes.common import reply_tokens

HELLO = [Message("user", "你好 Ollama")]


def drain(reply):
    return "".join(reply)


def test_streams_text_with_the_final_counters(ollama_server):
    ollama = OllamaProvider(ollama_server.url)
    reply = ollama.stream("llama3.2:1b", HELLO, Params(temperature=0.1, seed=3))
    assert drain(reply) == "".join(reply_tokens("你好 Ollama", 12))
    assert reply.usage.output_tokens == 12 and reply.usage.input_tokens > 0
    assert not reply.usage.estimated
    assert reply.finish_reason == "stop"
    assert ollama.server_tokens_per_s and ollama.server_tokens_per_s > 0
    options = ollama_server.requests[-1]["options"]
    assert options == {"temperature": 0.1, "seed": 3}


def test_max_tokens_becomes_num_predict(ollama_server):
    reply = OllamaProvider(ollama_server.url).stream("llama3.2:1b", HELLO, Params(max_tokens=3))
    drain(reply)
    assert ollama_server.requests[-1]["options"]["num_predict"] == 3
    assert reply.finish_reason == "length"


def test_thinking_is_kept_apart(ollama_server):
    reply = OllamaProvider(ollama_server.url).stream("fault-reasoning", HELLO, Params())
    text = drain(reply)
    assert reply.reasoning and text.startswith("Echo: 你好 Ollama")


def test_models_details_and_pull(ollama_server):
    ollama = OllamaProvider(ollama_server.url)
    assert "llama3.2:1b" in ollama.models()
    info = ollama.details("qwen3:0.6b")
    assert "thinking" in info.details["capabilities"]
    steps = list(ollama.pull("phi3:mini"))
    assert steps[-1].status == "success"
    assert any(0 < s.fraction < 1 for s in steps)
    assert "phi3:mini" in ollama.models()


def test_unknown_model_says_ollama_pull(ollama_server):
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider(ollama_server.url).stream("mistral:7b", HELLO, Params()))
    assert caught.value.kind == ErrorKind.MODEL_NOT_FOUND
    assert caught.value.hint == "error.ollama_model_not_found"


def test_refused_connection_says_how_to_start_ollama():
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider("http://127.0.0.1:9").stream("llama3.2:1b", HELLO, Params()))
    assert caught.value.kind == ErrorKind.CONNECTION
    assert caught.value.hint == "error.ollama_connection"


@pytest.mark.parametrize(
    ("model", "kind"),
    [("fault-500", ErrorKind.SERVER), ("fault-429", ErrorKind.RATE_LIMITED),
     ("fault-context", ErrorKind.CONTEXT_TOO_LONG)],
)
def test_server_faults(ollama_server, model, kind):
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider(ollama_server.url).stream(model, HELLO, Params()))
    assert caught.value.kind == kind


def test_disconnect_keeps_partial_text(ollama_server):
    reply = OllamaProvider(ollama_server.url).stream("fault-disconnect", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == ErrorKind.CONNECTION
    assert reply.text.startswith("Echo:")
