"""The one path every model call takes: timed, priced, and logged as exactly one row."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine

from core import pricing, store
from core.config import Endpoint
from core.providers import Message, Params, ProviderError, Reply, Usage, provider_for
from core.providers.base import ErrorKind, redact

log = logging.getLogger(__name__)
_INSERT = store.calls.insert()  # built once: the row goes in as parameters


class Call:
    """One metered model call. Iterate it for text deltas, from one thread; `stop()` from another.

    Its row is written exactly once, when the stream ends, fails, is stopped, or the iterator
    is dropped half-way: status ok, error (with the kind) or stopped.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        messages: list[Message],
        params: Params | None = None,
        *,
        user_id: str,
        source: str = "chat",
        conversation_id: str | None = None,
        eng: Engine | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.user_id = user_id
        self.source = source
        self.conversation_id = conversation_id
        self.started_at = datetime.now(UTC)
        self.status = "pending"
        self.error: ProviderError | None = None
        self.cost: Decimal | None = None
        self.usage: Usage | None = None  # set when the row is written
        self.row_id: int | None = None
        self._eng = eng
        self._stop = threading.Event()
        self._logged = threading.Lock()
        self.reply: Reply = provider_for(endpoint).stream(model, messages, params or Params())

    @property
    def text(self) -> str:
        """The answer so far, whole or partial."""
        return self.reply.text

    @property
    def finish_reason(self) -> str | None:
        """Why the server ended the answer ("stop", "length", ...), None if it did not say."""
        return self.reply.finish_reason

    def stop(self) -> None:
        """Ask the stream to end at the next chunk (safe from another thread)."""
        self._stop.set()
        self.reply.close()

    def __iter__(self) -> Iterator[str]:
        status, error = "stopped", None  # what a consumer dropping the iterator leaves
        try:
            yield from self.reply
            status = "ok" if self.reply.done else "stopped"
        except ProviderError as exc:
            status, error = "error", exc
            if self._stop.is_set():  # the connection we dropped on purpose
                status, error = "stopped", None
        except Exception as exc:  # noqa: BLE001 - a failure of ours is logged, not raised raw
            status = "error"
            error = ProviderError(ErrorKind.SERVER, redact(f"{type(exc).__name__}: {exc}"),
                                  hint="error.unexpected", model=self.model,
                                  url=self.endpoint.base_url)
        finally:
            self._finish(status, error)
        if error is not None:
            raise error

    def run(self) -> Call:
        """Consume the whole stream (for callers that only want the result)."""
        try:
            for _ in self:
                pass
        except ProviderError:
            pass  # recorded on self.error and in the log
        return self

    def _finish(self, status: str, error: ProviderError | None) -> None:
        if not self._logged.acquire(blocking=False):
            return
        reply = self.reply
        self.status, self.error = status, error
        usage = reply.usage or reply.estimate_usage()
        try:
            self.cost = pricing.cost(self.endpoint, self.model, usage, self.started_at,
                                     user_id=self.user_id, eng=self._eng)
        except Exception:  # a pricing failure must not lose the row
            log.exception("pricing failed for %s", self.model)
        row = {
            "user_id": self.user_id,
            "started_at": self.started_at,
            "source": self.source,
            "endpoint": self.endpoint.name,
            "provider": self.endpoint.kind,
            "base_url": self.endpoint.base_url,
            "model": self.model,
            "status": status,
            "error_kind": error.kind.value if error else None,
            "error_detail": error.detail[:2000] if error else None,
            "finish_reason": reply.finish_reason,
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "estimated": usage.estimated,
            "cost_usd": self.cost,
            "ttft_s": reply.ttft,
            "total_s": reply.total,
            "output_chars": len(reply.text),
            "conversation_id": self.conversation_id,
        }
        self.usage = usage
        try:
            with (self._eng or store.engine()).begin() as conn:
                result = conn.execute(_INSERT, row)
                self.row_id = result.inserted_primary_key[0]
        except Exception:  # the answer matters more than its log line
            log.exception("could not write the call log row")
