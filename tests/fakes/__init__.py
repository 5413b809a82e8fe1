"""Local fake OpenAI and Ollama servers for tests, benchmarks and click-through demos."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.ollama_server import FakeOllamaServer
    from tests.fakes.openai_server import FakeOpenAIServer

__all__ = ["FakeOllamaServer", "FakeOpenAIServer"]


def __getattr__(name: str) -> Any:
    """Import lazily so `python -m tests.fakes.openai_server` does not import itself twice."""
    if name == "FakeOpenAIServer":
        from tests.fakes.openai_server import FakeOpenAIServer

        return FakeOpenAIServer
    if name == "FakeOllamaServer":
        from tests.fakes.ollama_server import FakeOllamaServer

        return FakeOllamaServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
