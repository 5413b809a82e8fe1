"""The fake OpenAI / Ollama servers must be parsed by the official clients over real HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.fakes import FakeOllamaServer, FakeOpenAIServer
from tests.fakes.common import THINKING_TEXT, reply_tokens
from tests.timing import NEVER_S, WAIT_S, wait_until

SLOW = 0.3
USER = [{"role": "user", "content": "hello fake world"}]


def expected(text: str = "hello fake world", tokens: int = 12) -> str:
    """The full reply text for `text`."""
    return "".join(reply_tokens(text, tokens))


@pytest.fixture
def oai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(slow_first_token=SLOW) as srv:
        yield srv


@pytest.fixture
def oll() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer(slow_first_token=SLOW) as srv:
        yield srv


_CLIENTS: dict[tuple[str, float | None], openai.OpenAI] = {}


def client(srv: FakeOpenAIServer, timeout: float | None = None) -> openai.OpenAI:
    """A cached client (building one costs ~50 ms, which adds up over the suite)."""
    key = (srv.url, timeout)
    if key not in _CLIENTS:
        extra = {} if timeout is None else {"timeout": timeout}
        _CLIENTS[key] = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0, **extra)
    return _CLIENTS[key]


def stream_text(
    srv: FakeOpenAIServer, model: str, into: list[str], timeout: float | None = None
) -> None:
    """Stream a chat, appending content deltas to `into` (kept on failure for assertions)."""
    stream = client(srv, timeout).chat.completions.create(model=model, messages=USER, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)


# -- shared reply ------------------------------------------------------------------------


def test_reply_tokens_join_and_length() -> None:
    for text in ["", "hi", "  two  spaces\nand lines ", "x" * 100, "ünïcødé 漢字"]:
        for n in (0, 5, 40):
            toks = reply_tokens(text, n)
            assert "".join(toks).startswith("Echo: " + text)
            assert len(toks) >= n
    toks = reply_tokens("a b", 12)
    assert toks[:4] == ["Echo", ":", " a", " b"]
    assert len(toks) == 12
    assert "".join(reply_tokens("a b", 0)) == "Echo: a b"


# -- OpenAI ------------------------------------------------------------------------------


def test_openai_stream_with_usage(oai: FakeOpenAIServer) -> None:
    chunks = list(
        client(oai).chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, finish, last = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected()
    assert finish.choices[0].finish_reason == "stop"
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == len("hello fake world") // 4 + 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12
    assert oai.requests[-1]["stream_options"] == {"include_usage": True}
    assert oai.headers[-1]["authorization"] == "Bearer sk-test"


def test_openai_non_stream_reasoner_and_length(oai: FakeOpenAIServer) -> None:
    resp = client(oai).chat.completions.create(
        model="deepseek-reasoner", messages=USER, max_completion_tokens=3
    )
    choice = resp.choices[0]
    assert choice.message.content == "Echo: hello"
    assert choice.finish_reason == "length"
    assert choice.message.reasoning_content == THINKING_TEXT  # type: ignore[attr-defined]
    assert resp.usage is not None
    assert resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 6
    assert resp.usage.completion_tokens == 9


def test_openai_models(oai: FakeOpenAIServer) -> None:
    ids = [m.id for m in client(oai).models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "deepseek-reasoner", "whisper-1", "tts-1"} <= set(ids)
    assert {"fault-429", "fault-disconnect", "fault-azure", "fault-no-usage"} <= set(ids)
    assert client(oai).models.retrieve("gpt-4o").owned_by == "system"


def test_azure_client(oai: FakeOpenAIServer) -> None:
    az = openai.AzureOpenAI(
        azure_endpoint=oai.base_url, api_version="2024-10-21", api_key="sk-test", max_retries=0
    )
    chunks = list(
        az.chat.completions.create(
            model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    # Like Azure: a first chunk without choices, carrying prompt_filter_results.
    assert chunks[0].choices == []
    assert chunks[0].prompt_filter_results  # type: ignore[attr-defined]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected()
    assert chunks[-1].usage is not None
    assert oai.calls[-1] == (
        "POST",
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    )
    assert oai.headers[-1]["api-key"] == "sk-test"
    resp = az.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert resp.choices[0].message.content == expected()


def test_openai_bad_key(oai: FakeOpenAIServer) -> None:
    bad = openai.OpenAI(base_url=oai.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert exc.value.code == "invalid_api_key"
    assert "Incorrect API key provided: sk-wr***." in exc.value.message
    assert "sk-wrong" not in exc.value.message
    az = openai.AzureOpenAI(
        azure_endpoint=oai.base_url, api_version="2024-10-21", api_key="nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        az.models.list()


@pytest.mark.parametrize(
    ("model", "exc_type", "code"),
    [
        ("fault-429", openai.RateLimitError, "rate_limit_exceeded"),
        ("fault-500", openai.InternalServerError, None),
        ("fault-context", openai.BadRequestError, "context_length_exceeded"),
        ("no-such-model", openai.NotFoundError, "model_not_found"),
    ],
)
def test_openai_error_faults(
    oai: FakeOpenAIServer, model: str, exc_type: type[openai.APIStatusError], code: str | None
) -> None:
    for stream in (False, True):
        with pytest.raises(exc_type) as exc:
            client(oai).chat.completions.create(model=model, messages=USER, stream=stream)
        assert exc.value.code == code
    if model == "fault-429":
        assert exc.value.response.headers["retry-after"] == "1"
        assert exc.value.type == "requests"
    if model == "no-such-model":
        assert exc.value.message.endswith(
            "The model `no-such-model` does not exist or you do not have access to it."
        )


def test_openai_fault_attribute(oai: FakeOpenAIServer) -> None:
    oai.fault = "429"
    with pytest.raises(openai.RateLimitError):
        client(oai).chat.completions.create(model="gpt-4o-mini", messages=USER)
    oai.fault = None
    assert client(oai).chat.completions.create(model="gpt-4o-mini", messages=USER).choices


def test_openai_real_context_check(oai: FakeOpenAIServer) -> None:
    ok = [{"role": "user", "content": "x" * 200_000}]
    assert client(oai).chat.completions.create(model="gpt-4o", messages=ok).choices
    too_long = [{"role": "user", "content": "x" * 400_001}]
    with pytest.raises(openai.BadRequestError) as exc:
        client(oai).chat.completions.create(model="gpt-4o", messages=too_long)
    assert exc.value.code == "context_length_exceeded"


def test_openai_disconnect_mid_stream(oai: FakeOpenAIServer) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream_text(oai, "fault-disconnect", got)
    text = "".join(got)
    assert text and expected().startswith(text) and text != expected()


def test_openai_error_event_mid_stream(oai: FakeOpenAIServer) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        stream_text(oai, "fault-stream-error", got)
    assert not isinstance(exc.value, openai.APIStatusError)
    assert got


def test_openai_slow_first_token(oai: FakeOpenAIServer) -> None:
    with pytest.raises(openai.APITimeoutError):
        stream_text(oai, "fault-slow", [], timeout=0.1)
    got: list[str] = []
    start = time.monotonic()
    stream_text(oai, "fault-slow", got)
    assert time.monotonic() - start >= SLOW
    assert "".join(got) == expected()


def test_openai_no_usage_reasoning_azure_faults(oai: FakeOpenAIServer) -> None:
    def chunks(model: str) -> list[openai.types.chat.ChatCompletionChunk]:
        return list(
            client(oai).chat.completions.create(
                model=model, messages=USER, stream=True, stream_options={"include_usage": True}
            )
        )

    assert all(c.usage is None for c in chunks("fault-no-usage"))
    reasoning = chunks("fault-reasoning")
    deltas = [c.choices[0].delta for c in reasoning if c.choices]
    thinking = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert thinking == THINKING_TEXT
    assert reasoning[-1].usage is not None
    assert reasoning[-1].usage.completion_tokens_details is not None
    assert reasoning[-1].usage.completion_tokens_details.reasoning_tokens == 6
    azure = chunks("fault-azure")
    assert azure[0].choices == [] and azure[0].prompt_filter_results  # type: ignore[attr-defined]


def test_openai_rate_paces_tokens() -> None:
    with FakeOpenAIServer(tokens=20, rate=200) as srv:
        start = time.monotonic()
        got: list[str] = []
        stream_text(srv, "gpt-4o-mini", got)
        assert time.monotonic() - start >= 19 / 200
        assert len(got) == 20


def test_control_endpoint(oai: FakeOpenAIServer) -> None:
    r = httpx.post(f"{oai.base_url}/_fake/config", json={"fault": "500", "tokens": 30})
    assert r.json()["fault"] == "500"
    assert oai.fault == "500" and oai.tokens == 30
    assert httpx.post(f"{oai.base_url}/_fake/config", json={"nope": 1}).status_code == 400


# -- Ollama ------------------------------------------------------------------------------


def test_ollama_chat_stream(oll: FakeOllamaServer) -> None:
    parts = list(ollama.Client(host=oll.url).chat(model="llama3.2:1b", messages=USER, stream=True))
    assert "".join(p.message.content or "" for p in parts) == expected()
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    assert final.eval_count == 12
    assert final.prompt_eval_count == len("hello fake world") // 4 + 4
    assert final.eval_duration and final.eval_duration > 0
    assert final.total_duration and final.total_duration >= final.eval_duration
    assert not any(p.done for p in parts[:-1])


def test_ollama_non_stream_think_and_num_predict(oll: FakeOllamaServer) -> None:
    cl = ollama.Client(host=oll.url)
    resp = cl.chat(model="qwen3:0.6b", messages=USER, think=True, options={"num_predict": 3})
    assert resp.message.content == "Echo: hello"
    assert resp.message.thinking == THINKING_TEXT
    assert resp.done_reason == "length"
    with pytest.raises(ollama.ResponseError) as exc:
        cl.chat(model="llama3.2:1b", messages=USER, think=True)
    assert exc.value.status_code == 400
    parts = list(cl.chat(model="fault-reasoning", messages=USER, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == THINKING_TEXT
    assert oll.requests[-1]["model"] == "fault-reasoning"


def test_ollama_models(oll: FakeOllamaServer) -> None:
    cl = ollama.Client(host=oll.url)
    names = [m.model for m in cl.list().models]
    assert names[:2] == ["llama3.2:1b", "qwen3:0.6b"]
    assert "fault-429:latest" in names
    assert cl.show("qwen3:0.6b").capabilities == ["completion", "thinking"]
    assert cl.show("llama3.2:1b").capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as exc:
        cl.show("nope")
    assert exc.value.status_code == 404 and exc.value.error == "model 'nope' not found"
    progress = list(cl.pull("tinyllama", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in progress)
    assert "tinyllama:latest" in [m.model for m in cl.list().models]
    assert cl.pull("smollm:135m").status == "success"
    with pytest.raises(ollama.ResponseError) as exc:
        list(cl.pull("missing-model", stream=True))
    assert exc.value.error == "pull model manifest: file does not exist"
    assert exc.value.status_code == -1
    with pytest.raises(ollama.ResponseError) as exc:
        cl.pull("missing-model")
    assert exc.value.status_code == 500
    cl.chat(model="llama3.2:1b", messages=USER)
    assert [m.model for m in cl.ps().models] == ["llama3.2:1b"]
    assert httpx.get(f"{oll.url}/api/version").json() == {"version": "0.12.0"}


@pytest.mark.parametrize(
    ("model", "status"),
    [("fault-429", 429), ("fault-500", 500), ("fault-context", 400), ("no-such", 404)],
)
def test_ollama_error_faults(oll: FakeOllamaServer, model: str, status: int) -> None:
    cl = ollama.Client(host=oll.url)
    with pytest.raises(ollama.ResponseError) as exc:
        list(cl.chat(model=model, messages=USER, stream=True))
    assert exc.value.status_code == status
    with pytest.raises(ollama.ResponseError):
        cl.chat(model=model, messages=USER)
    if model == "no-such":
        assert exc.value.error == 'model "no-such" not found, try pulling it first'


def test_ollama_fault_attribute(oll: FakeOllamaServer) -> None:
    oll.fault = "500"
    with pytest.raises(ollama.ResponseError):
        ollama.Client(host=oll.url).chat(model="llama3.2:1b", messages=USER)


def test_ollama_disconnect_and_error_line(oll: FakeOllamaServer) -> None:
    cl = ollama.Client(host=oll.url)
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in cl.chat(model="fault-disconnect", messages=USER, stream=True):
            got.append(part.message.content or "")
    assert got and expected().startswith("".join(got))
    with pytest.raises(ollama.ResponseError) as exc:
        list(cl.chat(model="fault-stream-error", messages=USER, stream=True))
    assert exc.value.status_code == -1


def test_ollama_slow_first_token(oll: FakeOllamaServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        list(ollama.Client(host=oll.url, timeout=0.1).chat("fault-slow", USER, stream=True))
    parts = list(ollama.Client(host=oll.url).chat(model="fault-slow", messages=USER, stream=True))
    assert parts[-1].prompt_eval_duration and parts[-1].prompt_eval_duration >= SLOW * 1e9


# -- lifecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [FakeOpenAIServer, FakeOllamaServer])
def test_stop_does_not_hang_during_slow_stream(cls: type) -> None:
    srv = cls(slow_first_token=NEVER_S).start()
    base = srv.url + ("/chat/completions" if cls is FakeOpenAIServer else "/api/chat")
    body = {"model": "fault-slow", "messages": USER, "stream": True}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with httpx.stream("POST", base, json=body, headers={"Authorization": "Bearer sk-test"}):
                pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: srv.requests, what="the request to arrive")
    # The first token is due long after any deadline here: stop() must cut the wait short.
    stopping = threading.Thread(target=srv.stop)
    stopping.start()
    stopping.join(WAIT_S)
    thread.join(WAIT_S)
    assert not stopping.is_alive() and not thread.is_alive()


def test_standalone_cli() -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "tests.fakes", "--openai-port", "0", "--ollama-port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--quiet"], cwd=root, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        out = ""
        while "Ctrl-C" not in out:
            line = proc.stdout.readline()
            assert line, "CLI exited early"
            out += line
        openai_url = re.search(r"OPENAI_BASE_URL=(\S+)", out)
        ollama_url = re.search(r"OLLAMA_HOST=(\S+)", out)
        assert openai_url and ollama_url
        models = httpx.get(
            openai_url.group(1) + "/models", headers={"Authorization": "Bearer sk-test"}
        )
        assert models.status_code == 200
        assert httpx.get(ollama_url.group(1) + "/api/tags").status_code == 200
    finally:
        proc.terminate()
        proc.wait(WAIT_S)


# -- clean early ends, empty answers, hang-ups -------------------------------------------


@pytest.mark.parametrize("fault", ["cut-close", "cut-chunked"])
def test_openai_clean_cut_ends_the_iterator_silently(oai: FakeOpenAIServer, fault: str) -> None:
    """What issue 5 is about: the SDK just stops, with no finish_reason and no usage."""
    chunks = list(
        client(oai).chat.completions.create(
            model=f"fault-{fault}", messages=USER, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and expected().startswith(text) and text != expected()
    assert all(c.usage is None for c in chunks)
    assert not any(ch.finish_reason for c in chunks for ch in c.choices)
    with httpx.stream("POST", oai.url + "/chat/completions", headers={"Authorization":
                      "Bearer sk-test"}, json={"model": f"fault-{fault}", "messages": USER,
                                               "stream": True}) as r:
        body = r.read()
        chunked = r.headers.get("transfer-encoding") == "chunked"
    assert chunked == (fault == "cut-chunked")
    assert b"[DONE]" not in body and b'"finish_reason":"stop"' not in body


@pytest.mark.parametrize("fault", ["cut-close", "cut-chunked"])
def test_ollama_clean_cut_ends_without_the_done_line(oll: FakeOllamaServer, fault: str) -> None:
    parts = list(ollama.Client(host=oll.url).chat(model=f"fault-{fault}", messages=USER,
                                                   stream=True))
    text = "".join(p.message.content or "" for p in parts)
    assert text and expected().startswith(text) and text != expected()
    assert not any(p.done for p in parts)
    with httpx.stream("POST", oll.url + "/api/chat",
                      json={"model": f"fault-{fault}", "messages": USER}) as r:
        r.read()
        assert (r.headers.get("transfer-encoding") == "chunked") == (fault == "cut-chunked")


def test_empty_answers(oai: FakeOpenAIServer, oll: FakeOllamaServer) -> None:
    chunks = list(client(oai).chat.completions.create(model="fault-empty", messages=USER,
                                                      stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].finish_reason is None
    parts = list(ollama.Client(host=oll.url).chat(model="fault-empty", messages=USER,
                                                  stream=True))
    assert len(parts) == 1 and parts[0].done and parts[0].message.content == ""


def test_openai_content_filter_and_old_azure(oai: FakeOpenAIServer) -> None:
    chunks = list(client(oai).chat.completions.create(model="fault-content-filter",
                                                      messages=USER, stream=True))
    reasons = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert reasons == ["content_filter"]
    with pytest.raises(openai.BadRequestError) as exc:
        client(oai).chat.completions.create(model="fault-old-azure", messages=USER, stream=True,
                                            stream_options={"include_usage": True})
    assert "stream_options" in exc.value.message
    chunks = list(client(oai).chat.completions.create(model="fault-old-azure", messages=USER,
                                                      stream=True))
    assert chunks[0].choices == [] and all(c.usage is None for c in chunks)


def test_ollama_429_with_retry_after(oll: FakeOllamaServer) -> None:
    r = httpx.post(oll.url + "/api/chat", json={"model": "fault-429-after", "messages": USER})
    assert r.status_code == 429 and r.headers["retry-after"] == "30"


@pytest.mark.parametrize("cls", [FakeOpenAIServer, FakeOllamaServer])
def test_the_fake_sees_a_client_hang_up(cls: type) -> None:
    """While it waits for the first token and while it streams; not after a full answer."""
    with cls(slow_first_token=NEVER_S, rate=200, tokens=int(NEVER_S * 200)) as srv:
        path = "/chat/completions" if cls is FakeOpenAIServer else "/api/chat"
        headers = {"Authorization": "Bearer sk-test"}
        srv.rate = 0  # a whole answer, at full speed
        with httpx.Client(headers=headers) as plain:
            r = plain.post(srv.url + path, json={"model": "gpt-4o-mini" if cls is
                           FakeOpenAIServer else "llama3.2:1b", "messages": USER,
                           "stream": False})
            assert r.status_code == 200
        assert srv.hangups == []
        srv.rate = 200
        body = {"model": "fault-slow", "messages": USER, "stream": True}
        # The client gives up while the server still waits for its first token.
        with (pytest.raises(httpx.ReadTimeout),
              httpx.stream("POST", srv.url + path, json=body, headers=headers,
                           timeout=0.2) as r):
            r.read()  # Ollama waits before its headers, OpenAI after them
        assert srv.wait_for_hangups(1, timeout=WAIT_S)
        body = {"model": "fault-reasoning", "messages": USER, "stream": True}
        with httpx.stream("POST", srv.url + path, json=body, headers=headers) as r:
            next(r.iter_bytes())  # one token, then close mid-stream
        assert srv.wait_for_hangups(2, timeout=WAIT_S)
        assert [p for _, p in srv.hangups] == [path if cls is FakeOllamaServer
                                               else "/v1" + path] * 2
