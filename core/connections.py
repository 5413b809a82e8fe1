"""The Settings page's flows without the page: does an endpoint really answer, and pulls.

"Test connection" must ask the server. Listing models does so, but an endpoint with its
models configured (Azure deployments, which cannot be listed with an API key) is tested
with a one-token chat request instead, so a wrong key or a missing deployment fails here,
not at the user's first message. That request is metered like every model call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from core.config import Endpoint
from core.metering import Call
from core.providers import Message, OllamaProvider, Params, ProviderError, provider_for
from core.providers.base import ErrorKind
from core.providers.ollama_adapter import PullProgress

PROBE = [Message("user", "Reply with one word: ok")]
PROBE_TIMEOUT = 60.0  # seconds; a cold model can take a while to load


@dataclass(frozen=True)
class Check:
    """What a connection test found: the models (listed, or the configured ones), how long
    it took, and the model that answered the one-token request, if one was sent."""

    models: list[str]
    ms: float
    probed: str | None = None


def check(endpoint: Endpoint, *, user_id: str) -> Check:
    """Ask the endpoint's server whether it answers; raises ProviderError when it does not.

    A one-token request is a model call like any other: metered for `user_id` (a row with
    source "test") and refused by the budget's hard stop. Listing models is not metered.
    """
    provider = provider_for(endpoint)
    began = time.perf_counter()
    configured = list(endpoint.models)
    if configured or endpoint.kind == "azure":
        model = (configured or [endpoint.default_model or ""])[0]
        if not model:
            raise ProviderError(ErrorKind.BAD_REQUEST, hint="connect.no_model_to_test",
                                url=endpoint.base_url)
        probe(endpoint, model, user_id=user_id)
        return Check(configured or [model], _ms(began), probed=model)
    models = provider.models()
    return Check(models, _ms(began))


def probe(endpoint: Endpoint, model: str, *, user_id: str) -> str:
    """Send a one-token chat request to `model` through the metered path; its text, or the
    ProviderError it ended with (the budget's refusal included)."""
    call = Call(endpoint, model, PROBE, Params(max_tokens=1), user_id=user_id, source="test")
    call.run_sync(timeout=PROBE_TIMEOUT)
    if call.error is not None:
        raise call.error
    return call.text


def can_pull(endpoint: Endpoint) -> bool:
    """Whether models can be downloaded onto this endpoint's server (Ollama)."""
    return isinstance(provider_for(endpoint), OllamaProvider)


def pull(endpoint: Endpoint, model: str) -> Iterator[PullProgress]:
    """Download a model onto the endpoint's Ollama, yielding progress; ProviderError on failure."""
    provider = provider_for(endpoint)
    if not isinstance(provider, OllamaProvider):
        raise ValueError(f"{endpoint.name} is not an Ollama server")
    return provider.pull(model.strip())


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000
