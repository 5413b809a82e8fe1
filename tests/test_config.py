"""Endpoints from the environment, .env and secrets; base URLs checked."""

from __future__ import annotations

import pytest

from core.config import (
    PRESETS,
    ConfigError,
    default_model_for,
    load_endpoints,
    make_endpoint,
    normalize_base_url,
    read_env,
)
from tests.timing import WAIT_S


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:8000", "http://localhost:8000/v1"),  # bare host gets /v1
        ("http://localhost:8000/", "http://localhost:8000/v1"),
        ("http://localhost:8000/v1/", "http://localhost:8000/v1"),  # trailing slash
        ("  https://open.bigmodel.cn/api/paas/v4  ", "https://open.bigmodel.cn/api/paas/v4"),
    ],
)
def test_base_urls_are_normalized(given, expected):
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["not a url", "ftp://x", "localhost:8000", "http://", ""])
def test_what_is_not_a_url_is_refused(bad):
    with pytest.raises(ConfigError) as caught:
        normalize_base_url(bad)
    assert caught.value.key == "config.bad_url"


def test_ollama_host_may_be_host_and_port():
    assert normalize_base_url("127.0.0.1:11434", "ollama") == "http://127.0.0.1:11434"


def test_sdk_variables_vendor_keys_and_secret_tables():
    env = {
        "OPENAI_API_KEY": "sk-aaaaaaaaaaaaaaaa",
        "OPENAI_BASE_URL": "https://api.deepseek.com",
        "AZURE_OPENAI_API_KEY": "az-key-123456789",
        "AZURE_OPENAI_ENDPOINT": "https://me.openai.azure.com/",
        "OPENAI_API_VERSION": "2025-01-01-preview",
        "AZURE_OPENAI_DEPLOYMENTS": "gpt4o, mini",
        "MOONSHOT_API_KEY": "sk-moon-123456789",
        "OLLAMA_HOST": "0.0.0.0:11434",
        "VLLM_KEY": "vk-1234567890",
    }
    secrets = {"endpoints": [
        {"name": "vLLM box", "base_url": "http://10.0.0.5:8000", "api_key_env": "VLLM_KEY"},
        {"name": "Broken", "base_url": "nonsense"},
    ]}
    found, problems = load_endpoints(env, secrets)
    by_name = {e.name: e for e in found}
    assert by_name["DeepSeek"].base_url == "https://api.deepseek.com/v1"
    azure = by_name["Azure OpenAI"]
    assert (azure.kind, azure.api_version, azure.models) == (
        "azure", "2025-01-01-preview", ("gpt4o", "mini"))
    assert by_name["Moonshot / Kimi"].base_url == "https://api.moonshot.cn/v1"
    assert by_name["Ollama"].kind == "ollama"
    assert by_name["vLLM box"].api_key == "vk-1234567890" and by_name["vLLM box"].is_local
    assert [p.key for p in problems] == ["config.bad_url"]


def test_a_remote_server_needs_a_key_but_a_local_one_does_not():
    with pytest.raises(ConfigError) as caught:
        make_endpoint("Cloud", "custom", base_url="https://llm.example.com/v1")
    assert caught.value.key == "config.key_required"
    assert make_endpoint("LM Studio", "custom", base_url="http://localhost:1234").api_key is None


def test_the_key_stays_out_of_repr_and_is_masked():
    e = make_endpoint("OpenAI", "openai", api_key="sk-proj-abcdefghijklmnop")
    assert "abcdefghijklmnop" not in repr(e) and "abcdefghijklmnop" not in e.masked_key
    assert e.masked_key == "sk-…mnop"


def test_real_environment_wins_over_dotenv(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("OPENAI_API_KEY=from-dotenv\nOLLAMA_HOST=from-dotenv:1\n")
    monkeypatch.setenv("OPENAI_API_KEY", "from-environment")
    env = read_env(dotenv)
    assert env["OPENAI_API_KEY"] == "from-environment"
    assert env["OLLAMA_HOST"] == "from-dotenv:1"


def test_a_local_openai_compatible_server_is_not_taken_for_ollama():
    found, _ = load_endpoints({"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, {})
    assert [(e.name, e.kind, e.preset) for e in found] == [
        ("OpenAI-compatible", "openai", "custom")]


def test_an_ollama_at_the_default_host_is_found(ollama_server):
    from core.config import local_ollama

    found = local_ollama(ollama_server.url, timeout=WAIT_S)  # the app's 0.3 s is for a quiet laptop
    assert found is not None and (found.kind, found.source) == ("ollama", "auto")
    assert local_ollama("http://127.0.0.1:9") is None


def test_the_default_model_comes_from_the_endpoint_then_its_preset():
    deepseek = make_endpoint("DeepSeek", "deepseek", api_key="sk-x-123456789")
    assert default_model_for(deepseek, ["deepseek-reasoner", "deepseek-chat"]) == "deepseek-chat"
    assert default_model_for(deepseek, ["something-else"]) is None
    mine = make_endpoint("Mine", "deepseek", api_key="sk-x-123456789",
                         default_model="deepseek-reasoner")
    assert default_model_for(mine, ["deepseek-chat"]) == "deepseek-reasoner"
    openai_ep = make_endpoint("OpenAI", "openai", api_key="sk-x-123456789")
    assert default_model_for(openai_ep, ["gpt-4o", "gpt-4.1-mini"]) == "gpt-4.1-mini"
    for preset in ("openai", "deepseek", "qwen", "moonshot", "zhipu", "gemini"):
        assert PRESETS[preset].default_models, preset


def test_an_endpoint_proxy_is_checked():
    ok = make_endpoint("x", "openai", api_key="sk-x-123456789", proxy=" socks5://127.0.0.1:7890 ")
    assert ok.proxy == "socks5://127.0.0.1:7890"
    with pytest.raises(ConfigError) as caught:
        make_endpoint("x", "openai", api_key="sk-x-123456789", proxy="127.0.0.1:7890")
    assert caught.value.key == "config.bad_proxy"
    env: dict[str, str] = {}
    found, problems = load_endpoints(env, {"endpoints": [
        {"name": "via clash", "preset": "deepseek", "api_key": "sk-x-123456789",
         "proxy": "socks5h://127.0.0.1:7890"},
        {"name": "bad", "preset": "deepseek", "api_key": "sk-x-123456789", "proxy": "ftp://x"},
    ]})
    assert [e.proxy for e in found] == ["socks5h://127.0.0.1:7890"]
    assert [p.key for p in problems] == ["config.bad_proxy"]
