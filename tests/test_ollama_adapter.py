"""The Ollama adapter over real HTTP, against the fake server, with the official client."""

from __future__ import annotations

import pytest

from core.i18n import t
from core.providers import ErrorKind, Message, OllamaProvider, Params, ProviderError
from tests.fakes import FakeOllamaServer
from tests.fakes.common import reply_tokens
from tests.streaming import assert_cancel_drops_the_connection, drain

HELLO = [Message("user", "你好 Ollama")]


def test_streams_text_with_the_final_counters(ollama_server):
    ollama = OllamaProvider(ollama_server.url)
    reply = ollama.stream("llama3.2:1b", HELLO, Params(temperature=0.1, seed=3))
    assert drain(reply) == "".join(reply_tokens("你好 Ollama", 12))
    assert reply.usage.output_tokens == 12 and reply.usage.input_tokens > 0
    assert not reply.usage.estimated
    assert reply.finish_reason == "stop"
    assert reply.server_model == "llama3.2:1b" and reply.load_s is not None
    assert reply.complete and 0 < reply.ttft <= reply.total
    assert not hasattr(ollama, "server_tokens_per_s")  # per-call state stays on the reply
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


@pytest.mark.parametrize("moment", ["before the first token", "mid-answer"])
def test_cancelling_the_task_drops_the_connection(moment):
    slow = moment == "before the first token"
    with FakeOllamaServer(slow_first_token=30, rate=0 if slow else 100, tokens=5000) as server:
        reply = OllamaProvider(server.url).stream(
            "fault-slow" if slow else "llama3.2:1b", HELLO, Params())
        assert_cancel_drops_the_connection(server, reply, slow=slow)


@pytest.mark.parametrize("fault", ["cut-close", "cut-chunked"])
def test_a_stream_that_ends_cleanly_part_way_is_an_error(ollama_server, fault):
    reply = OllamaProvider(ollama_server.url).stream(f"fault-{fault}", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == ErrorKind.CONNECTION and caught.value.hint == "error.interrupted"
    full = "".join(reply_tokens("你好 Ollama", 12))
    assert reply.text and full.startswith(reply.text) and reply.text != full
    assert not reply.complete and reply.usage.estimated


def test_an_empty_answer_says_so(ollama_server):
    reply = OllamaProvider(ollama_server.url).stream("fault-empty", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.hint == "error.empty_answer"
    assert caught.value.kind == ErrorKind.SERVER  # the done line came: the server said so
    assert caught.value.context["model"] == "fault-empty"


def test_rate_limit_without_retry_after_names_no_number(ollama_server):
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider(ollama_server.url).stream("fault-429", HELLO, Params()))
    err = caught.value
    assert err.kind == ErrorKind.RATE_LIMITED and err.hint == "error.rate_limited_wait"
    assert err.http_status == 429 and "retry_after" not in err.context
    assert "?" not in t(err.hint, **err.context)


def test_rate_limit_quotes_the_servers_retry_after(ollama_server):
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider(ollama_server.url).stream("fault-429-after", HELLO, Params()))
    assert caught.value.hint == "error.rate_limited"
    assert caught.value.context["retry_after"] == "30"
    assert "30" in t(caught.value.hint, **caught.value.context)


def test_pulling_a_model_that_does_not_exist_says_so(ollama_server):
    with pytest.raises(ProviderError) as caught:
        list(OllamaProvider(ollama_server.url).pull("missing-model"))
    assert caught.value.kind == ErrorKind.MODEL_NOT_FOUND
    assert caught.value.hint == "error.pull_missing"
    assert caught.value.context["model"] == "missing-model"


def test_chatting_with_an_embedding_model_says_it_is_not_a_chat_model(ollama_server):
    with pytest.raises(ProviderError) as caught:
        drain(OllamaProvider(ollama_server.url).stream("nomic-embed-text", HELLO, Params()))
    assert caught.value.hint == "error.not_chat_model"
    assert caught.value.http_status == 400


def test_embedding_models_are_left_out_by_their_capabilities(ollama_server):
    models = OllamaProvider(ollama_server.url).models()
    assert "llama3.2:1b" in models and "qwen3:0.6b" in models
    assert "nomic-embed-text:latest" not in models  # /api/show: capabilities ["embedding"]


def test_a_failure_of_our_own_is_logged_with_its_traceback(ollama_server, caplog):
    prov = OllamaProvider(ollama_server.url)

    async def broken(*args, **kwargs):
        raise KeyError("a bug of ours")
        yield  # pragma: no cover - makes this an async generator

    prov._events = broken
    with caplog.at_level("ERROR", logger="core.providers.base"), \
            pytest.raises(ProviderError) as caught:
        drain(prov.stream("llama3.2:1b", HELLO, Params()))
    assert caught.value.hint == "error.unexpected"
    assert "Traceback" in caplog.text and "a bug of ours" in caplog.text
