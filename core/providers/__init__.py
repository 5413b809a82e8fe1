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


def provider_for(endpoint: Endpoint) -> Provider:
    """The adapter for an endpoint, built once so its HTTP connections are reused.

    Endpoints from the environment and secrets share one adapter across the process. A
    session's own endpoint (a key typed in Settings) keeps its adapter on itself, in that
    session's state: it is never in a process-wide cache and goes with the session.
    """
    if endpoint.source == "session":
        held = endpoint.held.get("provider")
        if held is None:
            held = endpoint.held["provider"] = _build(endpoint)
        return held
    return _shared(endpoint)


@functools.lru_cache(maxsize=64)
def _shared(endpoint: Endpoint) -> Provider:
    """The process-wide adapter of a configured endpoint."""
    return _build(endpoint)


def _build(endpoint: Endpoint) -> Provider:
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
