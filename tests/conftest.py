"""Shared fixtures: a fresh database per test, the fake servers, a clean environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from core import store
from core.config import PRESETS
from tests.fakes import FakeOllamaServer, FakeOpenAIServer

API_KEY = "sk-test-0123456789abcdef"

# Settings a developer's shell may carry that would make tests see real endpoints, besides
# each preset's key variable; the SDKs read some of these by themselves.
OTHER_CONFIG_VARS = frozenset({
    "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENTS",
    "AZURE_OPENAI_AD_TOKEN", "OPENAI_API_VERSION", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
    "OLLAMA_HOST", "OLLAMA_API_KEY", "DATABASE_URL", "APP_PASSWORD", "ADMIN_PASSWORD",
    "OWNGPT_ENV_FILE", "OWNGPT_AUTODETECT_OLLAMA", "OWNGPT_ROUTES",
})


def config_vars() -> tuple[str, ...]:
    """Every variable the tests clear: each preset's key (a new preset is covered by itself)."""
    keys = {p.key_env for p in PRESETS.values() if p.key_env}
    return tuple(sorted(keys | OTHER_CONFIG_VARS))


CONFIG_VARS = config_vars()
# What every test run sets: no real endpoint, and no Ollama found on the developer's machine.
TEST_ENV = {"OWNGPT_AUTODETECT_OLLAMA": "0"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No real endpoint, no .env of the developer's, and a database of the test's own."""
    for name in config_vars():
        monkeypatch.delenv(name, raising=False)
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OWNGPT_ENV_FILE", str(tmp_path / "absent.env"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'test.sqlite3'}")


@pytest.fixture
def db(clean_env) -> Engine:
    """The engine the app will use in this test."""
    return store.engine(store.database_url())


def call_rows(eng: Engine) -> list[dict]:
    """Every row of the call log, oldest first."""
    with eng.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(store.calls).order_by("id"))]


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAIServer]:
    """An OpenAI-protocol server on localhost that wants API_KEY."""
    with FakeOpenAIServer(api_key=API_KEY, tokens=12, slow_first_token=1.5) as server:
        yield server


@pytest.fixture(scope="session")
def ollama_server() -> Iterator[FakeOllamaServer]:
    """An Ollama-protocol server on localhost."""
    with FakeOllamaServer(tokens=12, slow_first_token=1.5) as server:
        yield server


@pytest.fixture(autouse=True)
def reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fault one test switched on does not leak into the next."""
    yield
    for name in ("openai_server", "ollama_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name).fault = None
