"""Where the models are: endpoints from the environment, `.env`, `st.secrets` and the session."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import httpx
from dotenv import dotenv_values

Kind = Literal["openai", "azure", "ollama"]
AZURE_API_VERSION = "2024-10-21"
DEFAULT_HOST = "http://127.0.0.1:11434"  # where a local Ollama listens
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")  # what httpx (with socksio) speaks
# The user:pass@ of a URL, wherever one stands in a text: up to the authority's last @.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")


def mask_url(text: str) -> str:
    """A URL, or any text holding URLs, with each `user:pass@` shown as `***@`.

    The one way a base URL (or a proxy's) is shown, logged or stored: Settings, error
    sentences, log lines and the call log's row all go through it; requests still use the
    URL as configured.
    """
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


@dataclass(frozen=True)
class Preset:
    """A known kind of server: the base URL to use and where its key usually lives."""

    id: str
    label: str
    kind: Kind
    base_url: str = ""
    key_env: str = ""
    docs: str = ""
    # Chosen, in this order, when the user has neither used a model nor set default_model.
    default_models: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    p.id: p
    for p in (
        Preset("openai", "OpenAI", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY",
               "https://platform.openai.com/api-keys",
               ("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini", "gpt-4o")),
        Preset("azure", "Azure OpenAI", "azure", "", "AZURE_OPENAI_API_KEY",
               "https://learn.microsoft.com/azure/ai-services/openai/"),
        Preset("ollama", "Ollama", "ollama", DEFAULT_HOST, "", "https://ollama.com/download"),
        Preset("deepseek", "DeepSeek", "openai", "https://api.deepseek.com/v1",
               "DEEPSEEK_API_KEY", "https://platform.deepseek.com/api_keys", ("deepseek-chat",)),
        Preset("qwen", "Qwen (DashScope)", "openai",
               "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY",
               "https://dashscope.console.aliyun.com/apiKey", ("qwen-plus", "qwen-turbo")),
        Preset("moonshot", "Moonshot / Kimi", "openai", "https://api.moonshot.cn/v1",
               "MOONSHOT_API_KEY", "https://platform.moonshot.cn/console/api-keys",
               ("kimi-latest", "moonshot-v1-8k")),
        Preset("zhipu", "Zhipu GLM", "openai", "https://open.bigmodel.cn/api/paas/v4",
               "ZHIPUAI_API_KEY", "https://open.bigmodel.cn/usercenter/apikeys",
               ("glm-4-flash", "glm-4-plus")),
        Preset("gemini", "Gemini", "openai",
               "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY",
               "https://aistudio.google.com/apikey",
               ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-1.5-flash")),
        Preset("openrouter", "OpenRouter", "openai", "https://openrouter.ai/api/v1",
               "OPENROUTER_API_KEY", "https://openrouter.ai/keys",
               ("openai/gpt-4o-mini", "deepseek/deepseek-chat")),
        Preset("custom", "OpenAI-compatible", "openai", "", "", ""),
    )
}


def default_model_for(endpoint: Endpoint, models: list[str]) -> str | None:
    """The model to choose when the user has not picked one: the endpoint's `default_model`,
    else the first of its preset's defaults the server offers."""
    if endpoint.default_model:
        return endpoint.default_model
    preset = PRESETS.get(endpoint.preset)
    for model in preset.default_models if preset else ():
        if model in models:
            return model
    return None


class ConfigError(ValueError):
    """A setting that cannot work; `key` names the i18n sentence, `context` fills it."""

    def __init__(self, key: str, **context: Any) -> None:
        super().__init__(key)
        self.key = key
        self.context = context


@dataclass(frozen=True)
class Endpoint:
    """One server to talk to. The key is kept out of repr, so it never lands in a log."""

    name: str
    kind: Kind
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    preset: str = "custom"
    models: tuple[str, ...] = ()
    source: str = "env"  # env, secrets, session or auto
    default_model: str | None = None  # chosen when the user has not picked one yet
    proxy: str | None = None  # http(s):// or socks5:// for this endpoint only
    pricing: str = "auto"  # auto, free, catalog or own: how its calls are priced
    # A session endpoint's own adapter (`providers.provider_for`): held by the endpoint, which
    # lives in one session's state, so a key typed in Settings goes when the session does.
    held: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def masked_key(self) -> str:
        """Enough of the key to tell two apart, never enough to use."""
        if not self.api_key:
            return "—"
        return f"{self.api_key[:3]}…{self.api_key[-4:]}" if len(self.api_key) > 12 else "***"

    @property
    def shown_url(self) -> str:
        """The base URL as it may be shown, logged or stored: without `user:pass@`."""
        return mask_url(self.base_url)

    @property
    def is_local(self) -> bool:
        """Ollama or a server on this machine or a private network: free unless priced."""
        return self.kind == "ollama" or is_local_url(self.base_url)


def is_local_url(url: str) -> bool:
    """Whether a URL points at this machine or a private network."""
    host = urlparse(url).hostname or ""
    if host == "localhost" or host.endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_unspecified


def normalize_base_url(url: str, kind: Kind = "openai") -> str:
    """A base URL the SDK can use: scheme checked, trailing slash gone, `/v1` added to a bare host.

    Servers such as vLLM, LM Studio and llama.cpp serve the OpenAI API under /v1; a URL with a
    path of its own (Zhipu's /api/paas/v4, Gemini's /v1beta/openai) is left as it is.
    """
    url = url.strip()
    if kind == "ollama" and url and "://" not in url:
        url = "http://" + url  # OLLAMA_HOST is often just host:port
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
        raise ConfigError("config.bad_url", url=url[:200])
    url = url.rstrip("/")
    if kind == "openai" and parsed.path in ("", "/"):
        url += "/v1"
    return url


def preset_for_url(url: str) -> Preset:
    """The OpenAI-protocol vendor whose host the URL points at, else custom."""
    host = urlparse(url).hostname or ""
    for preset in PRESETS.values():
        if preset.kind == "openai" and urlparse(preset.base_url).hostname == host:
            return preset
    return PRESETS["custom"]


def make_endpoint(
    name: str,
    preset_id: str,
    *,
    base_url: str = "",
    api_key: str | None = None,
    api_version: str | None = None,
    models: tuple[str, ...] | list[str] = (),
    source: str = "session",
    default_model: str | None = None,
    proxy: str | None = None,
    pricing: str = "auto",
) -> Endpoint:
    """An endpoint from what a user typed or a config file says, checked."""
    preset = PRESETS.get(preset_id) or PRESETS["custom"]
    url = base_url.strip() or preset.base_url
    if not url:
        raise ConfigError("config.url_required", name=name)
    if preset.kind == "azure":
        url = normalize_base_url(url, "azure")
        api_version = api_version or AZURE_API_VERSION
    else:
        url = normalize_base_url(url, preset.kind)
    if preset.kind != "ollama" and not (api_key or "").strip() and not is_local_url(url):
        raise ConfigError("config.key_required", name=name)
    proxy = (proxy or "").strip() or None
    if proxy and (urlparse(proxy).scheme not in PROXY_SCHEMES or not urlparse(proxy).hostname):
        raise ConfigError("config.bad_proxy", name=name, proxy=proxy[:200])
    return Endpoint(
        name=name.strip() or preset.label,
        kind=preset.kind,
        base_url=url,
        api_key=(api_key or "").strip() or None,
        api_version=api_version,
        preset=preset.id,
        models=tuple(m.strip() for m in models if m and m.strip()),
        source=source,
        default_model=(default_model or "").strip() or None,
        proxy=proxy,
        pricing=pricing,
    )


def read_env(dotenv_path: str | Path | None = None) -> dict[str, str]:
    """The environment with `.env` beneath it: real environment variables win.

    OWNGPT_ENV_FILE names another file (the tests point it away from a developer's own).
    """
    path = dotenv_path or os.environ.get("OWNGPT_ENV_FILE") or ".env"
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    values.update(os.environ)
    return values


def load_endpoints(
    env: Mapping[str, str], secrets: Mapping[str, Any]
) -> tuple[list[Endpoint], list[ConfigError]]:
    """Endpoints from the SDKs' own variables, vendor keys and `[[endpoints]]`, and the problems."""
    found: list[Endpoint] = []
    problems: list[ConfigError] = []

    def add(name: str, preset: str, **kwargs: Any) -> None:
        try:
            endpoint = make_endpoint(name, preset, **kwargs)
        except ConfigError as err:
            err.context.setdefault("name", name)
            problems.append(err)
            return
        if all(e.name != endpoint.name for e in found):
            found.append(endpoint)

    if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
        url = env.get("OPENAI_BASE_URL") or PRESETS["openai"].base_url
        preset = preset_for_url(url)
        add(preset.label if preset.id != "custom" else "OpenAI-compatible", preset.id,
            base_url=url, api_key=env.get("OPENAI_API_KEY"), source="env")
    if env.get("AZURE_OPENAI_API_KEY") and env.get("AZURE_OPENAI_ENDPOINT"):
        deployments = env.get("AZURE_OPENAI_DEPLOYMENTS", "").split(",")
        add("Azure OpenAI", "azure", base_url=env["AZURE_OPENAI_ENDPOINT"],
            api_key=env["AZURE_OPENAI_API_KEY"], api_version=env.get("OPENAI_API_VERSION"),
            models=deployments, source="env")
    for preset in PRESETS.values():
        if preset.kind == "openai" and preset.id != "openai" and env.get(preset.key_env):
            add(preset.label, preset.id, api_key=env[preset.key_env], source="env")
    if env.get("OLLAMA_HOST"):
        add("Ollama", "ollama", base_url=env["OLLAMA_HOST"], source="env")

    for entry in secrets.get("endpoints", []) or []:
        entry = dict(entry)
        name = str(entry.get("name") or entry.get("preset") or "endpoint")
        key = entry.get("api_key") or (env.get(entry["api_key_env"]) if entry.get("api_key_env")
                                       else None)
        add(name, str(entry.get("preset") or entry.get("kind") or "custom"),
            base_url=str(entry.get("base_url") or ""), api_key=key,
            api_version=entry.get("api_version"), models=list(entry.get("models") or []),
            source="secrets", default_model=entry.get("default_model"),
            proxy=entry.get("proxy"), pricing=str(entry.get("pricing") or "auto"))
    return found, problems


def local_ollama(host: str = DEFAULT_HOST, timeout: float = 0.3) -> Endpoint | None:
    """The Ollama answering at the default host, if any: used without asking."""
    try:
        # trust_env=False: a SOCKS/HTTP proxy from the environment must not carry loopback.
        httpx.get(f"{host}/api/version", timeout=timeout, trust_env=False).raise_for_status()
    except httpx.HTTPError:
        return None
    return Endpoint("Ollama", "ollama", host, preset="ollama", source="auto")
