"""Settings' flows without the page: a connection test really asks the server; pulls."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import budget, connections
from core.config import make_endpoint
from core.providers import ErrorKind, ProviderError
from tests.conftest import API_KEY, call_rows
from tests.test_usage import add


def azure(server, key=API_KEY, models=("gpt-4o-mini",)):
    return make_endpoint("Azure", "azure", base_url=server.base_url, api_key=key,
                         models=list(models))


def test_an_endpoint_without_models_is_tested_by_listing_them(openai_server):
    endpoint = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY)
    before = len(openai_server.calls)
    found = connections.check(endpoint, user_id="ana")
    assert "gpt-4o-mini" in found.models and found.probed is None and found.ms > 0
    assert openai_server.calls[before:] == [("GET", "/v1/models")]


def test_configured_models_are_tested_with_a_one_token_request(openai_server):
    endpoint = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY,
                             models=["gpt-4o", "gpt-4o-mini"])
    before = len(openai_server.requests)
    found = connections.check(endpoint, user_id="ana")
    assert found.probed == "gpt-4o" and found.models == ["gpt-4o", "gpt-4o-mini"]
    sent = openai_server.requests[before:]
    assert len(sent) == 1 and sent[0]["model"] == "gpt-4o" and sent[0]["max_tokens"] == 1


def test_a_wrong_azure_key_fails_the_test(openai_server):
    with pytest.raises(ProviderError) as caught:
        connections.check(azure(openai_server, key="wrong-azure-key-0000"), user_id="ana")
    assert caught.value.kind == ErrorKind.AUTH and caught.value.http_status == 401
    assert "wrong-azure-key-0000" not in caught.value.detail
    assert openai_server.calls[-1][1].startswith("/openai/deployments/gpt-4o-mini/")


def test_a_right_azure_key_passes_and_a_missing_deployment_fails(openai_server):
    assert connections.check(azure(openai_server), user_id="ana").probed == "gpt-4o-mini"
    with pytest.raises(ProviderError) as caught:
        connections.check(azure(openai_server, models=("my-gpt5-deployment",)), user_id="ana")
    assert caught.value.kind == ErrorKind.MODEL_NOT_FOUND


def test_azure_with_nothing_to_test_says_what_to_add(openai_server):
    with pytest.raises(ProviderError) as caught:
        connections.check(azure(openai_server, models=()), user_id="ana")
    assert caught.value.hint == "connect.no_model_to_test"


def test_a_dead_server_fails_the_test():
    endpoint = make_endpoint("down", "ollama", base_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError) as caught:
        connections.check(endpoint, user_id="ana")
    assert caught.value.kind == ErrorKind.CONNECTION


def test_pull_shows_progress_and_a_missing_model_says_so(ollama_server, openai_server):
    ollama = make_endpoint("Ollama", "ollama", base_url=ollama_server.url)
    assert connections.can_pull(ollama)
    assert not connections.can_pull(make_endpoint("x", "custom", base_url=openai_server.url))
    steps = list(connections.pull(ollama, " tinyllama "))
    assert steps[-1].status == "success" and any(0 < s.fraction < 1 for s in steps)
    with pytest.raises(ProviderError) as caught:
        list(connections.pull(ollama, "missing-model"))  # the fake has no such model
    assert caught.value.hint == "error.pull_missing"


def test_a_connection_test_is_a_metered_call_and_listing_models_is_not(db, openai_server):
    listed = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY)
    connections.check(listed, user_id="ana")
    assert call_rows(db) == []  # listing models is not a model request
    probed = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY,
                           models=["gpt-4o-mini"])
    assert connections.check(probed, user_id="ana").probed == "gpt-4o-mini"
    [row] = call_rows(db)
    assert (row["source"], row["status"], row["user_id"], row["model"]) == (
        "test", "ok", "ana", "gpt-4o-mini")
    assert row["input_tokens"] > 0 and row["ended_at"] is not None


def test_a_connection_test_obeys_the_hard_stop_when_the_budget_is_spent(db, openai_server):
    budget.set_budget("ana", "1", "USD", hard_stop=True, eng=db)
    add(db, cost=Decimal("1.5"))  # this month's spend is past the budget
    endpoint = make_endpoint("fake", "custom", base_url=openai_server.url, api_key=API_KEY,
                             models=["gpt-4o-mini"])
    before = len(openai_server.requests)
    with pytest.raises(ProviderError) as caught:
        connections.check(endpoint, user_id="ana")
    assert caught.value.kind == ErrorKind.BUDGET and caught.value.hint == "error.budget"
    assert openai_server.requests[before:] == []  # nothing went out
    refused = call_rows(db)[-1]
    assert (refused["source"], refused["status"], refused["error_kind"]) == (
        "test", "error", "budget")
