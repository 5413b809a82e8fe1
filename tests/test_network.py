"""Proxies: SOCKS and HTTP from the environment or per endpoint; loopback and NO_PROXY direct."""

from __future__ import annotations

import socket

import pytest

from core import aio
from core.config import local_ollama, make_endpoint
from core.providers import ErrorKind, Message, OllamaProvider, Params, ProviderError, provider_for
from core.providers.network import proxy_for
from core.providers.openai_adapter import OpenAIProvider
from tests.conftest import API_KEY
from tests.fakes.proxy import FakeProxy
from tests.timing import WAIT_S

HELLO = [Message("user", "through the proxy")]
PROXY_VARS = ("ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(reply) -> str:
    async def collect():
        return "".join([d async for d in reply])

    return aio.run(collect(), timeout=WAIT_S)


def test_which_proxy():
    env = {"ALL_PROXY": "socks5://127.0.0.1:7890", "HTTPS_PROXY": "http://p:3128",
           "NO_PROXY": "internal.corp,.lan,10.0.0.0/8,host.test:8080"}
    assert proxy_for("https://api.openai.com/v1", env=env) == "http://p:3128"
    assert proxy_for("http://api.example.com/v1", env=env) == "socks5://127.0.0.1:7890"
    for direct in ("http://127.0.0.1:11434", "http://localhost:8000/v1", "http://[::1]:80",
                   "https://internal.corp/v1", "https://a.internal.corp/v1", "http://box.lan",
                   "http://10.1.2.3:8000/v1", "http://host.test:8080"):
        assert proxy_for(direct, "http://mine:1", env) is None, direct
    assert proxy_for("http://host.test:9090", env=env) == "socks5://127.0.0.1:7890"
    assert proxy_for("https://x.example", "socks5h://me:1080", env) == "socks5h://me:1080"
    assert proxy_for("https://x.example", env={"no_proxy": "*", "all_proxy": "socks5://a:1"}) \
        is None
    assert proxy_for("https://x.example", env={}) is None


def test_under_a_socks_proxy_loopback_still_works(monkeypatch, openai_server, ollama_server):
    """Clash's default with nothing listening: the app starts and local servers answer."""
    monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("all_proxy", f"socks5://127.0.0.1:{closed_port()}")
    assert local_ollama("http://127.0.0.1:9") is None  # no ImportError, just "not there"
    openai_ep = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY)
    ollama_ep = make_endpoint("ollama", "ollama", base_url=ollama_server.url)
    for endpoint, model in ((openai_ep, "gpt-4o-mini"), (ollama_ep, "llama3.2:1b")):
        provider = provider_for(endpoint)
        assert model in provider.models()
        assert drain(provider.stream(model, HELLO, Params())).startswith("Echo:")
    # A remote endpoint does go to the (dead) SOCKS proxy: a connection error, not a crash.
    remote = OpenAIProvider(api_key=API_KEY, base_url="http://fake.test:1/v1", max_retries=0)
    with pytest.raises(ProviderError) as caught:
        drain(remote.stream("gpt-4o-mini", HELLO, Params()))
    assert caught.value.kind == ErrorKind.CONNECTION


def test_an_http_proxy_from_the_environment_carries_a_remote_endpoint(
    monkeypatch, openai_server, ollama_server
):
    with FakeProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        remote = OpenAIProvider(api_key=API_KEY, max_retries=0,
                                base_url=f"http://fake.test:{openai_server.port}/v1")
        assert drain(remote.stream("gpt-4o-mini", HELLO, Params())).startswith("Echo:")
        ollama = OllamaProvider(f"http://fake.test:{ollama_server.port}")
        assert drain(ollama.stream("llama3.2:1b", HELLO, Params())).startswith("Echo:")
        assert proxy.seen == ["fake.test", "fake.test"]
        local = OllamaProvider(ollama_server.url)  # loopback: never through the proxy
        assert "llama3.2:1b" in local.models()
        assert proxy.seen == ["fake.test", "fake.test"]


def test_no_proxy_is_honoured(monkeypatch, openai_server):
    with FakeProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,fake.test")
        remote = OpenAIProvider(api_key=API_KEY, max_retries=0,
                                base_url=f"http://fake.test:{openai_server.port}/v1")
        with pytest.raises(ProviderError) as caught:  # direct: nothing resolves fake.test
            drain(remote.stream("gpt-4o-mini", HELLO, Params()))
        assert caught.value.kind == ErrorKind.CONNECTION
        assert proxy.seen == []


def test_an_endpoint_proxy_is_used_without_any_environment(openai_server):
    with FakeProxy() as proxy:
        endpoint = make_endpoint("via proxy", "custom", api_key=API_KEY, proxy=proxy.url,
                                 base_url=f"http://fake.test:{openai_server.port}/v1")
        reply = provider_for(endpoint).stream("gpt-4o-mini", HELLO, Params())
        assert drain(reply).startswith("Echo: through the proxy")
        assert proxy.seen == ["fake.test"]
