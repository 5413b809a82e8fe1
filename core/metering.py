"""The one path every model call takes: timed, priced, and logged as exactly one row.

The row goes in when the request goes out (status running, input tokens estimated); while the
call runs, a heartbeat refreshes it with the output so far; when the call ends it is completed
exactly once: ok, stopped or error. A process killed mid-answer leaves its row running with a
heartbeat that stops moving, and `mark_interrupted` turns it into `interrupted` later, from any
process: a call is never lost, and a live call of another process is never taken for dead.

Every database write runs on one writer thread of this module, never on the call loop: a slow
or locked database delays a row, never an answer or the other calls, and one process never
competes with itself for SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, func
from sqlalchemy.exc import OperationalError

from core import aio, budget, pricing, store
from core.config import Endpoint
from core.providers import Message, Params, ProviderError, Reply, Usage, provider_for
from core.providers.base import ErrorKind, log_failure, redact
from core.tokens import estimate_tokens

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds between heartbeats of a running call. `mark_interrupted`'s default staleness (60 s)
# leaves room for a dozen missed beats before a live call could be taken for dead.
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
# A database locked by another writer beyond SQLite's busy_timeout: retried, then given up.
WRITE_RETRIES_S = (0.2, 1.0, 3.0)

_calls = store.calls
# Statements built once: each row write binds parameters only (see bench/README.md).
_INSERT = _calls.insert()
_COMPLETE = _calls.update().where(_calls.c.id == bindparam("row_id"))
_BEAT = (
    _calls.update()
    .where(_calls.c.id == bindparam("row_id"), _calls.c.status == "running")
    .values(heartbeat_at=bindparam("beat_at"), output_tokens=bindparam("beat_tokens"),
            output_chars=bindparam("beat_chars"))
)
_writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="owngpt-ledger")
_live: set[Call] = set()  # calls with a request out; touched on the call loop only
_beating: asyncio.Task[None] | None = None
_beating_every = HEARTBEAT_S


class Call:
    """One metered model call, made by awaiting `run()` on the call loop (`core.aio`), usually
    through `core.runner.Run`. Read its attributes from any thread while it runs and after.

    Its row is written when the request goes out and completed exactly once when the call
    ends, whether the answer finished (ok), was stopped (stopped, tokens estimated where the
    server gave none) or failed (error, with the kind and what the server said). A failed
    database write is logged and never costs the answer.
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
        comparison_id: str | None = None,
        eng: Engine | None = None,
    ) -> None:
        if source not in store.SOURCES:
            raise ValueError(f"source must be one of {store.SOURCES}, not {source!r}")
        self.endpoint = endpoint
        self.model = model
        self.user_id = user_id
        self.source = source
        self.conversation_id = conversation_id
        self.comparison_id = comparison_id
        self.started_at = datetime.now(UTC)  # reset when the request goes out
        self.ended_at: datetime | None = None
        self.status = "pending"  # then running, then ok / stopped / error
        self.error: ProviderError | None = None
        self.cost: Decimal | None = None
        self.row_id: int | None = None
        self._usage: Usage | None = None
        self._eng = eng
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop_requested = False
        self._streaming = False  # on the loop only: whether a cancel would land in the stream
        self._ran = False
        self._elapsed: float | None = None
        self.reply: Reply = provider_for(endpoint).stream(model, messages, params or Params())

    # -- what the page reads, live ------------------------------------------------------------

    @property
    def text(self) -> str:
        """The answer so far, whole or partial."""
        return self.reply.text

    @property
    def reasoning(self) -> str:
        """The reasoning so far, kept apart from the answer."""
        return self.reply.reasoning

    @property
    def usage(self) -> Usage | None:
        """Tokens as the server counted them, else estimated (flagged); None until the end."""
        return self._usage

    @property
    def ttft(self) -> float | None:
        """Seconds from the request to the first token."""
        return self.reply.ttft

    @property
    def total(self) -> float | None:
        """Seconds from the request to the end of the call."""
        return self.reply.total

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens a second after the first token."""
        return self.reply.output_tokens_per_s

    @property
    def server_model(self) -> str | None:
        """The model the server says answered (an Azure deployment names its model here)."""
        return self.reply.server_model

    @property
    def load_s(self) -> float | None:
        """Seconds the server spent loading the model (Ollama)."""
        return self.reply.load_s

    @property
    def finish_reason(self) -> str | None:
        """Why the server ended the answer (stop, length, content_filter...)."""
        return self.reply.finish_reason

    @property
    def ended(self) -> bool:
        """Whether the answer is over; its cost and row are settled once `run()` returns
        (for a Run: before on_end)."""
        return self.status in ("ok", "stopped", "error")

    # -- making the call ----------------------------------------------------------------------

    def stop(self) -> None:
        """End the call (thread-safe, idempotent): the request is cancelled, which drops its
        connection at once, also while the first token is still coming. The call then ends
        as stopped, its partial answer kept. A call that already ended is left as it is."""
        self._stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing is left to stop
                loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # On the loop: only the streaming part is cancelled, never the row's completion.
        if self._streaming and self._task is not None:
            self._task.cancel()

    async def run(self) -> Call:
        """Make the call on the running loop and settle its row; returns self, never raises
        for the call's own failure (see `status` and `error`)."""
        if self._ran:
            raise RuntimeError("a Call runs once")
        self._ran = True
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._loop = loop
        if self._stop_requested:  # stopped before it went out: nothing was sent or billed
            self._usage, self.cost = Usage(), Decimal(0)
            self.status, self.ended_at = "stopped", datetime.now(UTC)
            return self
        self.started_at = datetime.now(UTC)
        # The budget's hard stop, checked before anything is sent, on the writer thread (it
        # reads the database): every page and every kind of call passes here.
        refusal = await loop.run_in_executor(_writer, self._admit)
        if refusal is not None:
            self._usage, self.cost, self._elapsed = Usage(), Decimal(0), 0.0
            self.error, self.status, self.ended_at = refusal, "error", datetime.now(UTC)
            await loop.run_in_executor(_writer, self._refused_row)
            return self
        self.status = "running"
        started = time.perf_counter()
        # The row goes in beside the request, on the writer thread: neither waits for the other.
        inserting = loop.run_in_executor(_writer, self._insert)
        _live.add(self)
        _start_heartbeat(loop)
        status, error, foreign_cancel = "error", None, False
        self._streaming = True
        try:
            async for _ in self.reply:  # the reply keeps the text; the page reads it live
                pass
            status = "ok"
        except asyncio.CancelledError:
            status = "stopped"
            task = asyncio.current_task()
            if self._stop_requested and task is not None:
                task.uncancel()  # our own stop, handled here
            else:
                foreign_cancel = True  # the loop or an owner cancelled us: say so after the row
        except ProviderError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a failure of ours: logged, key blanked
            log_failure(exc, (self.endpoint.api_key,))
            error = ProviderError(ErrorKind.SERVER, redact(f"{type(exc).__name__}: {exc}",
                                                           (self.endpoint.api_key,)),
                                  hint="error.unexpected", model=self.model,
                                  url=self.endpoint.base_url)
        finally:
            self._streaming = False
            _live.discard(self)
        self._settle(status, error, time.perf_counter() - started)
        foreign_cancel |= (await aio.through_cancel(inserting))[1]
        foreign_cancel |= (await aio.through_cancel(
            loop.run_in_executor(_writer, self._complete)))[1]
        if foreign_cancel:
            raise asyncio.CancelledError
        return self

    def run_sync(self, timeout: float | None = None) -> Call:
        """Make the call from synchronous code on the call loop and wait for its end."""
        return aio.run(self.run(), timeout)

    def _settle(self, status: str, error: ProviderError | None, elapsed: float) -> None:
        """The call's outcome, on the call itself, before its row is written."""
        reply = self.reply
        self._usage = reply.usage or reply.estimate_usage()
        self.ended_at = datetime.now(UTC)
        self._elapsed = reply.total if reply.total is not None else elapsed
        self.error = error
        self.status = status

    # -- the row (on the writer thread) -------------------------------------------------------

    def _engine(self) -> Engine:
        # Resolved here only, on the writer thread: the first store.engine() of a process
        # creates the tables, which two threads must not do at once.
        return self._eng or store.engine()

    def _price(self) -> None:
        usage, reply = self._usage or Usage(), self.reply
        if pricing.never_reached(self.error, reply.usage, bool(reply.text or reply.reasoning)):
            self.cost = Decimal(0)  # the model never read the request: nothing was billed
            return
        try:
            cost = pricing.cost(self.endpoint, self.model, usage, self.started_at, eng=self._eng)
            server_model = reply.server_model
            if cost is None and server_model and server_model != self.model:
                # An Azure deployment or an alias: the model the server names has a price.
                cost = pricing.cost(self.endpoint, server_model, usage, self.started_at,
                                    eng=self._eng)
            self.cost = cost
        except Exception:  # a pricing failure must not lose the row
            log.exception("pricing failed for %s", self.model)

    def _admit(self) -> ProviderError | None:
        """None when the call may go out; else why it is refused (the budget's hard stop)."""
        try:
            budget.enforce(self.user_id, self.endpoint, self.model, eng=self._engine())
        except budget.Refused as exc:
            # No detail: the server said nothing, the sentence says what to do.
            return ProviderError(ErrorKind.BUDGET, hint=exc.hint, model=self.model,
                                 url=self.endpoint.base_url, **exc.context)
        return None

    def _refused_row(self) -> None:
        # One row, written whole: the call never went out, so nothing was used or billed.
        try:
            self.row_id = _write(self._engine(), lambda conn: conn.execute(
                _INSERT, {**_identity(self), **self._final_row()}).inserted_primary_key[0])
        except Exception:  # an unreachable database is a reason for the refusal itself
            log.warning("could not write the refused call of %s", self.model, exc_info=True)

    def _insert(self) -> None:
        estimate = self.reply.estimate_usage()
        row = {
            "user_id": self.user_id,
            "started_at": self.started_at,
            "heartbeat_at": self.started_at,
            "source": self.source,
            "endpoint": self.endpoint.name,
            "provider": self.endpoint.kind,
            "base_url": self.endpoint.shown_url,  # never a user:pass@
            "model": self.model,
            "status": "running",
            "input_tokens": estimate.input_tokens,
            "estimated": True,
            "conversation_id": self.conversation_id,
            "comparison_id": self.comparison_id,
        }
        try:
            self.row_id = _write(self._engine(), lambda conn: conn.execute(_INSERT, row)
                                 .inserted_primary_key[0])
        except Exception:  # the answer matters more than its log line; completion retries
            log.exception("could not write the call log row of %s", self.model)

    def _complete(self) -> None:
        self._price()  # off the call loop: a user's prices may be read from the database
        row = self._final_row()
        try:
            if self.row_id is None:  # the first write failed: the row goes in whole, once
                self.row_id = _write(self._engine(), lambda conn: conn.execute(
                    _INSERT, {**_identity(self), **row}).inserted_primary_key[0])
            else:
                _write(self._engine(), lambda conn: conn.execute(
                    _COMPLETE, {"row_id": self.row_id, **row}))
        except Exception:  # the answer is on the call; only its log line is lost
            log.exception("could not complete the call log row of %s", self.model)

    def _final_row(self) -> dict[str, Any]:
        reply, error, usage = self.reply, self.error, self._usage or Usage()
        text = reply.text
        return {
            "status": self.status,
            "heartbeat_at": self.ended_at,
            "ended_at": self.ended_at,
            "server_model": reply.server_model,
            "error_kind": error.kind.value if error else None,
            "error_detail": error.detail[:2000] if error else None,
            "http_status": getattr(error, "http_status", None),
            "request_id": getattr(error, "request_id", None),
            "finish_reason": reply.finish_reason,
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "estimated": usage.estimated,
            "cost_usd": self.cost,
            "ttft_s": reply.ttft,
            "total_s": self._elapsed,
            "load_s": reply.load_s,
            "output_chars": len(text),
        }


def _identity(call: Call) -> dict[str, Any]:
    return {
        "user_id": call.user_id, "started_at": call.started_at, "source": call.source,
        "endpoint": call.endpoint.name, "provider": call.endpoint.kind,
        "base_url": call.endpoint.shown_url, "model": call.model,
        "conversation_id": call.conversation_id, "comparison_id": call.comparison_id,
    }


def _write(eng: Engine, work: Callable[[Any], T]) -> T:
    """One transaction; a database still locked after SQLite's own wait is tried again."""
    for pause in (*WRITE_RETRIES_S, None):
        try:
            with eng.begin() as conn:
                return work(conn)
        except OperationalError as exc:
            if pause is None or "locked" not in str(exc).lower():
                raise
            log.warning("database locked; writing the call log again in %.1f s", pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


# -- the heartbeat ------------------------------------------------------------------------------


def _start_heartbeat(loop: asyncio.AbstractEventLoop) -> None:
    """One task per process beats for every running call (started on the loop, on demand).

    A changed HEARTBEAT_S (tests, benchmarks) takes effect at once, not after a whole beat.
    """
    global _beating, _beating_every
    if _beating is not None and not _beating.done():
        if _beating_every == HEARTBEAT_S:
            return
        _beating.cancel()
    _beating_every = HEARTBEAT_S
    _beating = loop.create_task(_heartbeat(HEARTBEAT_S))


async def _heartbeat(every: float) -> None:
    loop = asyncio.get_running_loop()
    while _live:
        await asyncio.sleep(every)
        beats: dict[Engine | None, list[dict[str, Any]]] = {}
        now = datetime.now(UTC)
        for call in list(_live):
            if call.row_id is None:
                continue
            # The output only: estimating a long prompt again on every beat would stall the loop.
            text = call.reply.text
            tokens = estimate_tokens(text) + estimate_tokens(call.reply.reasoning)
            beats.setdefault(call._eng, []).append({
                "row_id": call.row_id, "beat_at": now, "beat_tokens": tokens,
                "beat_chars": len(text)})
        for eng, rows in beats.items():
            loop.run_in_executor(_writer, _beat, eng, rows)


def _beat(eng: Engine | None, rows: list[dict[str, Any]]) -> None:
    try:
        _write(eng or store.engine(), lambda conn: conn.execute(_BEAT, rows))
    except Exception:  # the next beat tries again; a minute of misses is tolerated
        log.warning("could not write the heartbeat of %d running calls", len(rows),
                    exc_info=True)


def mark_interrupted(eng: Engine | None = None, *, stale_after_s: float = STALE_AFTER_S,
                     endpoints: Iterable[Endpoint] = ()) -> int:
    """Turn running rows whose heartbeat stopped `stale_after_s` ago into `interrupted`.

    Their process died mid-call (a redeploy, a kill, a sleeping Cloud app): the row keeps the
    input tokens and the output it had at its last heartbeat, which is also when it ended,
    and is priced with them (estimated, flagged) like a stopped call; `endpoints` are the
    configured ones, whose pricing modes apply. A live call, of this process or another on
    the same database, beats every few seconds and is never marked. Returns how many rows
    were marked.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    last_seen = func.coalesce(_calls.c.heartbeat_at, _calls.c.started_at)
    statement = (
        _calls.update()
        .where(_calls.c.status == "running", last_seen < cutoff)
        .values(status="interrupted", ended_at=last_seen)
        .returning(*_PRICED)
    )
    with (eng or store.engine()).begin() as conn:
        rows = conn.execute(statement).all()
        pricing.price_logged(conn, rows, {e.name: e for e in endpoints}, eng=eng)
    return len(rows)


# What pricing a logged row needs (core.pricing.price_logged).
_PRICED = (_calls.c.id, _calls.c.endpoint, _calls.c.provider, _calls.c.base_url, _calls.c.model,
           _calls.c.server_model, _calls.c.started_at, _calls.c.input_tokens,
           _calls.c.cached_input_tokens, _calls.c.output_tokens, _calls.c.reasoning_tokens)
