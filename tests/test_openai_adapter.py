"""The OpenAI adapter over real HTTP, against the fake server, with the official client."""

from __future__ import annotations

import pytest

from core.providers import ErrorKind, Message, Params, ProviderError
from core.providers.openai_adapter import OpenAIProvider, is_chat_model
from tests.conftest import API_KEY
from tests.fakes import FakeOpenAIServer
from tests.fakes.common import reply_tokens
from tests.streaming import assert_cancel_drops_the_connection, drain

HELLO = [Message("user", "Hello there")]


def provider(server, **kwargs) -> OpenAIProvider:
    return OpenAIProvider(api_key=kwargs.pop("api_key", API_KEY), base_url=server.url,
                          max_retries=0, **kwargs)


def test_streams_text_and_takes_usage_from_the_server(openai_server):
    reply = provider(openai_server).stream("gpt-4o-mini", HELLO, Params())
    assert drain(reply) == "".join(reply_tokens("Hello there", 12))
    assert reply.usage is not None and not reply.usage.estimated
    assert reply.usage.output_tokens == 12
    assert reply.usage.input_tokens > 0
    assert reply.finish_reason == "stop"
    assert 0 < reply.ttft <= reply.total
    body = openai_server.requests[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_params_reach_the_server(openai_server):
    params = Params(temperature=0.3, top_p=0.9, max_tokens=5, seed=7)
    reply = provider(openai_server).stream("gpt-4o-mini", HELLO, params)
    drain(reply)
    body = openai_server.requests[-1]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.3, 0.9, 7)
    assert body["max_tokens"] == 5  # a compatible server gets the widely known name
    assert reply.finish_reason == "length"


def test_a_server_without_usage_gives_a_flagged_estimate(openai_server):
    reply = provider(openai_server).stream("fault-no-usage", HELLO, Params())
    text = drain(reply)
    assert text.startswith("Echo: Hello there")
    assert reply.usage.estimated and reply.usage.output_tokens > 0


def test_azure_first_chunk_without_choices_is_normal(openai_server):
    reply = provider(openai_server).stream("fault-azure", HELLO, Params())
    assert drain(reply).startswith("Echo: Hello there")
    assert not reply.usage.estimated


def test_azure_client_reaches_the_deployment_path(openai_server):
    azure = OpenAIProvider(api_key=API_KEY, azure_endpoint=openai_server.url.removesuffix("/v1"),
                           api_version="2024-10-21", models=("gpt-4o-mini",), max_retries=0)
    assert azure.models() == ["gpt-4o-mini"]
    assert drain(azure.stream("gpt-4o-mini", HELLO, Params(max_tokens=50))).startswith("Echo:")
    assert "max_completion_tokens" in openai_server.requests[-1]


def test_reasoning_is_kept_apart_from_the_answer(openai_server):
    reply = provider(openai_server).stream("fault-reasoning", HELLO, Params())
    text = drain(reply)
    assert reply.reasoning and reply.reasoning not in text
    assert text.startswith("Echo: Hello there")


def test_models_lists_what_the_server_has(openai_server):
    models = provider(openai_server).models()
    assert "gpt-4o-mini" in models and "fault-429" in models


def test_only_chat_models_count_on_openai():
    ids = ["gpt-4o", "gpt-4o-mini", "o3-mini", "text-embedding-3-small", "dall-e-3", "whisper-1",
           "tts-1", "gpt-4o-realtime-preview", "gpt-4o-audio-preview", "davinci-002"]
    assert [i for i in ids if is_chat_model(i)] == ["gpt-4o", "gpt-4o-mini", "o3-mini"]


@pytest.mark.parametrize(
    ("model", "api_key", "kind", "hint"),
    [
        ("gpt-4o-mini", "sk-wrong-key-123456789", ErrorKind.AUTH, "error.auth"),
        ("no-such-model", API_KEY, ErrorKind.MODEL_NOT_FOUND, "error.model_not_found"),
        ("fault-429", API_KEY, ErrorKind.RATE_LIMITED, "error.rate_limited"),
        ("fault-500", API_KEY, ErrorKind.SERVER, "error.server"),
        ("fault-context", API_KEY, ErrorKind.CONTEXT_TOO_LONG, "error.context_too_long"),
    ],
)
def test_server_errors_become_provider_errors(openai_server, model, api_key, kind, hint):
    reply = provider(openai_server, api_key=api_key).stream(model, HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == kind and caught.value.hint == hint
    assert "sk-wrong-key-123456789" not in str(caught.value.detail)
    assert caught.value.context["model"] == model


def test_rate_limit_says_when_to_retry(openai_server):
    with pytest.raises(ProviderError) as caught:
        drain(provider(openai_server).stream("fault-429", HELLO, Params()))
    assert caught.value.context["retry_after"] == "1"


def test_disconnect_mid_answer_keeps_the_partial_text(openai_server):
    reply = provider(openai_server).stream("fault-disconnect", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == ErrorKind.CONNECTION
    assert caught.value.hint == "error.interrupted"
    assert reply.text.startswith("Echo:")


def test_server_down_is_a_connection_error():
    down = OpenAIProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(ProviderError) as caught:
        drain(down.stream("gpt-4o-mini", HELLO, Params()))
    assert caught.value.kind == ErrorKind.CONNECTION and caught.value.hint == "error.connection"
    with pytest.raises(ProviderError):
        down.models()


def test_a_base_url_without_v1_says_so(openai_server):
    bare = OpenAIProvider(api_key=API_KEY, base_url=openai_server.url.removesuffix("/v1"),
                          max_retries=0)
    with pytest.raises(ProviderError) as caught:
        drain(bare.stream("gpt-4o-mini", HELLO, Params()))
    assert caught.value.hint == "error.wrong_path"


@pytest.mark.parametrize(
    ("moment", "model"),
    [("before the headers", "fault-slow-headers"), ("before the first token", "fault-slow"),
     ("mid-answer", "gpt-4o-mini")],
)
def test_cancelling_the_task_drops_the_connection(moment, model):
    slow = moment != "mid-answer"
    with FakeOpenAIServer(api_key=None, slow_first_token=30, rate=0 if slow else 100,
                          tokens=5000) as server:
        reply = OpenAIProvider(api_key="none", base_url=server.url, max_retries=0).stream(
            model, HELLO, Params())
        assert_cancel_drops_the_connection(server, reply, slow=slow)


@pytest.mark.parametrize("fault", ["cut-close", "cut-chunked"])
def test_a_stream_that_ends_cleanly_part_way_is_an_error(openai_server, fault):
    reply = provider(openai_server).stream(f"fault-{fault}", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == ErrorKind.CONNECTION and caught.value.hint == "error.interrupted"
    assert caught.value.context["url"] == openai_server.url
    full = "".join(reply_tokens("Hello there", 12))
    assert reply.text and full.startswith(reply.text) and reply.text != full
    assert not reply.complete and reply.usage.estimated and reply.total is not None


def test_only_the_role_chunk_then_done_says_the_answer_was_empty(openai_server):
    reply = provider(openai_server).stream("fault-empty", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.hint == "error.empty_answer" and reply.text == ""
    assert caught.value.kind == ErrorKind.CONNECTION  # [DONE] is swallowed: no end signal


def test_finish_reason_length_ends_normally(openai_server):
    reply = provider(openai_server).stream("gpt-4o-mini", HELLO, Params(max_tokens=3))
    assert drain(reply) == "Echo: Hello"
    assert reply.finish_reason == "length" and reply.complete


def test_content_filter_is_an_error_with_the_partial_text(openai_server):
    reply = provider(openai_server).stream("fault-content-filter", HELLO, Params())
    with pytest.raises(ProviderError) as caught:
        drain(reply)
    assert caught.value.kind == ErrorKind.CONTENT_FILTER
    assert reply.text.startswith("Echo") and reply.finish_reason == "content_filter"


def test_the_server_reported_model_is_kept(openai_server):
    azure = OpenAIProvider(api_key=API_KEY, azure_endpoint=openai_server.url.removesuffix("/v1"),
                           api_version="2024-10-21", models=("gpt-4o-mini",), max_retries=0)
    reply = azure.stream("gpt-4o-mini", HELLO, Params())
    drain(reply)
    assert reply.server_model == "gpt-4o-mini"  # Azure's first chunk has model "": skipped


def test_an_old_azure_api_version_is_asked_again_without_stream_options(openai_server):
    azure = OpenAIProvider(api_key=API_KEY, azure_endpoint=openai_server.url.removesuffix("/v1"),
                           api_version="2024-02-01", models=("fault-old-azure",), max_retries=0)
    before = len(openai_server.requests)
    reply = azure.stream("fault-old-azure", HELLO, Params())
    assert drain(reply).startswith("Echo: Hello there")
    sent = openai_server.requests[before:]
    assert ["stream_options" in body for body in sent] == [True, False]
    assert reply.complete and reply.usage.estimated
    drain(azure.stream("fault-old-azure", HELLO, Params()))  # remembered: asked once
    assert "stream_options" not in openai_server.requests[-1]
    assert len(openai_server.requests) == before + 3


def test_errors_carry_the_http_status_and_request_id(openai_server):
    with pytest.raises(ProviderError) as caught:
        drain(provider(openai_server).stream("fault-500", HELLO, Params()))
    assert caught.value.http_status == 500
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_choosing_an_image_model_says_it_is_not_a_chat_model(openai_server):
    with pytest.raises(ProviderError) as caught:
        drain(provider(openai_server).stream("dall-e-3", HELLO, Params()))
    assert caught.value.hint == "error.not_chat_model"
    assert caught.value.http_status == 404


def test_a_failure_of_our_own_is_logged_with_its_traceback_and_no_key(openai_server, caplog):
    secret = "sk-test-0123456789abcdef"
    prov = provider(openai_server)

    async def broken(*args, **kwargs):
        raise ValueError(f"bug while holding {secret}")
        yield  # pragma: no cover - makes this an async generator

    prov._events = broken
    with caplog.at_level("ERROR", logger="core.providers.base"), \
            pytest.raises(ProviderError) as caught:
        drain(prov.stream("gpt-4o-mini", HELLO, Params()))
    assert caught.value.hint == "error.unexpected"
    logged = caplog.text
    assert "Traceback" in logged and "ValueError" in logged and "broken" in logged
    assert secret not in logged


def test_non_chat_models_are_out_of_the_list_but_still_typeable(openai_server):
    models = provider(openai_server).models()
    assert not {"text-embedding-3-small", "dall-e-3", "whisper-1", "tts-1"} & set(models)
    with pytest.raises(ProviderError) as caught:  # typed anyway: the server's own answer
        drain(provider(openai_server).stream("text-embedding-3-small", HELLO, Params()))
    assert caught.value.hint == "error.not_chat_model"
