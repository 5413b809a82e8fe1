"""Adapters for each wire protocol, and the one place that builds them."""

from __future__ import annotations

import functools

from core.config import Endpoint
from core.providers.base import (
    ErrorKind,
    Message,
    Params,
    Provider,
    ProviderError,
    Reply,
    Usage,
)
from core.providers.ollama_adapter import OllamaProvider
from core.providers.openai_adapter import OpenAIProvider

__all__ = [
    "ErrorKind",
    "Message",
    "OllamaProvider",
    "OpenAIProvider",
    "Params",
    "Provider",
    "ProviderError",
    "Reply",
    "Usage",
    "provider_for",
]


@functools.lru_cache(maxsize=64)
def provider_for(endpoint: Endpoint) -> Provider:
    """The adapter for an endpoint, built once so its HTTP connections are reused."""
    if endpoint.kind == "ollama":
        return OllamaProvider(endpoint.base_url, proxy=endpoint.proxy)
    if endpoint.kind == "azure":
        return OpenAIProvider(
            api_key=endpoint.api_key,
            azure_endpoint=endpoint.base_url,
            api_version=endpoint.api_version,
            models=endpoint.models,
            proxy=endpoint.proxy,
        )
    return OpenAIProvider(
        api_key=endpoint.api_key, base_url=endpoint.base_url, models=endpoint.models,
        proxy=endpoint.proxy,
    )
