"""What of a conversation the model gets: the turns that may be sent, trimmed to its window.

A branch of the tree becomes a request in two steps: `sendable` keeps the turns a model may
see (a question without a usable answer is left out with it), and `fit_context` keeps the
system prompt and as many of the newest turns as fit the model's window (`context_window`),
less the room kept for the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.config import Endpoint
from core.conversations import ChatMessage
from core.providers.base import Message
from core.tokens import estimate_tokens

PER_MESSAGE_TOKENS = 4  # role and framing a chat template adds around each message

# Context windows of common models (tokens), for servers that do not say.
KNOWN_WINDOWS = {
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "gpt-4.1": 1_047_576, "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576, "gpt-4-turbo": 128_000, "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385, "o1": 200_000, "o3": 200_000, "o3-mini": 200_000,
    "o4-mini": 200_000, "gpt-5": 400_000, "gpt-5-mini": 400_000, "gpt-5-nano": 400_000,
    "deepseek-chat": 65_536, "deepseek-reasoner": 65_536,
}
DEFAULT_WINDOW = 8_192
# Ollama's window is what the request asks for (num_ctx); more than this costs a laptop
# gigabytes of memory, so the app asks for at most this much even if the model could take more.
OLLAMA_MAX_CTX = 8_192

_ollama_windows: dict[tuple[Endpoint, str], int] = {}
_ollama_lock = threading.Lock()


@dataclass(frozen=True)
class Fit:
    """The request that fits the model's window, and what had to be left out."""

    messages: list[Message]  # system prompt first (when set), then the kept turns
    left_out: list[ChatMessage]  # oldest turns that did not fit, oldest first
    tokens: int  # estimated prompt tokens of `messages`
    budget: int  # window minus the room kept for the answer

    @property
    def fits(self) -> bool:
        """False when even the system prompt and the last turn exceed the budget."""
        return self.tokens <= self.budget


def context_window(endpoint: Endpoint, model: str) -> int:
    """The model's context window in tokens: Ollama's num_ctx the app asks for (the model's own
    length when smaller, asked of the server once per process), a known window, else a
    default."""
    if endpoint.kind == "ollama":
        key = (endpoint, model)
        with _ollama_lock:
            if key in _ollama_windows:
                return _ollama_windows[key]
        try:
            from core.providers import provider_for

            length = provider_for(endpoint).details(model).details.get("context_length")
        except Exception:  # noqa: BLE001 - an unknown window: the default will do (asked again)
            return OLLAMA_MAX_CTX
        window = min(int(length), OLLAMA_MAX_CTX) if length else OLLAMA_MAX_CTX
        with _ollama_lock:
            _ollama_windows[key] = window
        return window
    base = model.split("/")[-1]
    for name in sorted(KNOWN_WINDOWS, key=len, reverse=True):
        if base == name or base.startswith(name + "-"):
            return KNOWN_WINDOWS[name]
    return DEFAULT_WINDOW


def reserve_for_answer(max_tokens: int | None, window: int) -> int:
    """The room kept in the window for the answer: its max_tokens, else a quarter (at most
    1,024 tokens)."""
    return max_tokens or min(1024, window // 4)


def sendable(path_messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The turns a request may carry, each user message once and never two in a row.

    The branch ends with the question being asked, which always goes. Before it, a question
    goes only with its answer: one with no answer (its process died before any was saved),
    an error, or an answer stopped or interrupted before any text is left out with it; an
    answer cut short (stopped, interrupted) goes as the text it has.
    """
    out: list[ChatMessage] = []
    last = len(path_messages) - 1
    for i, m in enumerate(path_messages):
        if m.role != "user":
            continue
        if i == last:
            out.append(m)
            break
        answer = path_messages[i + 1]
        if answer.role == "assistant" and answer.status != "error" and answer.text.strip():
            out += [m, answer]
    return out


def to_send(messages: Sequence[ChatMessage]) -> list[Message]:
    """The messages as the model gets them: text only (never reasoning), nothing empty."""
    return [Message(m.role, m.text) for m in messages if m.text.strip()]


def fit_context(system: str, path_messages: Sequence[ChatMessage], window_tokens: int,
                reserve_output: int, *,
                estimate: Callable[[str], int] = estimate_tokens) -> Fit:
    """The system prompt and as many of the newest turns as fit `window_tokens` less
    `reserve_output`, trimmed oldest turn first (a turn: a user message and what follows).

    The system prompt and the last turn are always kept, even when they alone do not fit
    (then `Fit.fits` is False and the server will say so). Estimates from the newest turn
    backwards and stops at the first that does not fit, so a long history costs little.
    """
    budget = window_tokens - reserve_output
    kept_turns = [m for m in path_messages if m.text.strip()]
    starts = [i for i, m in enumerate(kept_turns) if m.role == "user" or i == 0]
    used = estimate(system) + PER_MESSAGE_TOKENS if system else 0
    keep_from = len(kept_turns)
    for start in reversed(starts):
        cost = sum(estimate(m.text) + PER_MESSAGE_TOKENS for m in kept_turns[start:keep_from])
        if keep_from < len(kept_turns) and used + cost > budget:
            break
        used += cost
        keep_from = start
    head = [Message("system", system)] if system else []
    kept = kept_turns[keep_from:]
    return Fit(head + to_send(kept), kept_turns[:keep_from], used, budget)
