"""The one path every model call takes: timed, priced, and logged as exactly one row.

The row goes in when the request goes out (status running, input tokens estimated); while the
call runs, a heartbeat refreshes it with the output so far; when the call ends it is completed
exactly once: ok, stopped or error. A process killed mid-answer leaves its row running with a
heartbeat that stops moving, and `mark_interrupted` turns it into `interrupted` later, from any
process: a call is never lost, and a live call of another process is never taken for dead
(heartbeats and staleness are read on the database's clock, not the machines'). A process that
was only slow may still complete an interrupted row: it is flagged late and the hourly rollup
that had counted it is corrected in the same transaction.

Row writes go through the write queue (`core.writes`, never the call loop): a slow or locked
database delays a row, never an answer or the other calls, and a locked database is retried
until the row is written. Reads (the budget's hard stop before the request, the price after
it) run on a small pool of their own, so they never wait behind a locked write; the budget's
read has a deadline, and a Stop is honoured while it runs.

One concern, kept whole (~600 lines): the life of one call's row, from admission to its
completion or interruption, reads best in one file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select
from sqlalchemy.exc import OperationalError

from core import aio, budget, pricing, store, writes
from core.config import Endpoint
from core.providers import Message, Params, ProviderError, Reply, Usage, provider_for
from core.providers.base import ErrorKind, log_failure, redact
from core.tokens import estimate_tokens

log = logging.getLogger(__name__)

# Seconds between heartbeats of a running call. `mark_interrupted`'s default staleness (60 s)
# leaves room for a dozen missed beats before a live call could be taken for dead. Tests use a
# short beat (0.1 s) with a wide margin (5 s), never a margin a loaded machine can miss.
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
# The budget's read before a request goes out gets this long; past it the call is refused if a
# hard stop was last seen (fail closed), else let through, as when the database is down.
BUDGET_DEADLINE_S = 2.0

_calls = store.calls
# Reads of the metered path (the budget, prices): a pool and connections of their own, so a
# locked writer never holds up a call's start.
_readers = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                 thread_name_prefix="owngpt-budget")
_live: set[Call] = set()  # calls with a request out; touched on the call loop only
_beating: asyncio.Task[None] | None = None
_beating_every = HEARTBEAT_S
_beats: dict[Engine | None, writes.Pending[None]] = {}  # the last heartbeat write per database


@dataclass(frozen=True)
class _Statements:
    """The row's statements for one dialect, built once: each write binds parameters only."""

    insert_running: Any  # heartbeat_at on the database's clock
    insert_whole: Any  # a row written once, at its end
    complete: Any  # compare-and-set: only a running row
    complete_late: Any  # compare-and-set: only an interrupted row, flagged late
    beat: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    now = store.db_now(dialect)
    row = _calls.c.id == bindparam("row_id")
    return _Statements(
        insert_running=_calls.insert().values(heartbeat_at=now),
        insert_whole=_calls.insert(),
        complete=_calls.update().where(row, _calls.c.status == "running"),
        complete_late=_calls.update().where(row, _calls.c.status == "interrupted")
        .values(late=True),
        beat=_calls.update().where(row, _calls.c.status == "running").values(
            heartbeat_at=now, output_tokens=bindparam("beat_tokens"),
            output_chars=bindparam("beat_chars")),
    )


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
        self.status = "pending"  # then checking (the budget), running, then ok/stopped/error
        self.error: ProviderError | None = None
        self.cost: Decimal | None = None
        self.row_id: int | None = None
        # Made here, written with the row: a retried write of it never adds a second row, and
        # a reply saved before its row was written finds it by this key.
        self.key = secrets.token_hex(16)
        self._usage: Usage | None = None
        self._eng = eng
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop_requested = False
        self._streaming = False  # on the loop only: whether a cancel would land in the stream
        self._checking = False  # on the loop only: whether the budget's check is awaited
        self._priced = False
        self._inserts = 0  # tries at writing the row's first version (the write queue's thread)
        self._ran = False
        self._elapsed: float | None = None
        # What else the heartbeat writes, in its transaction, while the call runs: the answer
        # the call is for, with the text so far (`on_beat(text, reasoning, conn)`).
        self.on_beat: Callable[[str, str, Connection], object] | None = None
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
        as stopped, its partial answer kept. A Stop during the budget's check means the
        request is never sent. A call that already ended is left as it is."""
        self._stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing is left to stop
                loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # On the loop: only the budget's check and the streaming part are cancelled, never the
        # row's writes.
        if (self._streaming or self._checking) and self._task is not None:
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
            return self._not_sent()
        self.started_at = datetime.now(UTC)
        # The budget's hard stop, checked before anything is sent: every page and every kind
        # of call passes here.
        self.status = "checking"
        try:
            refusal = await self._check_budget(loop)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._stop_requested or task is None:
                self._not_sent()
                raise  # the loop or an owner cancelled us
            task.uncancel()
        if self._stop_requested:  # a Stop during the check: the request is never sent
            return self._not_sent()
        if refusal is not None:
            self._usage, self.cost, self._elapsed = Usage(), Decimal(0), 0.0
            self.error, self.status, self.ended_at = refusal, "error", datetime.now(UTC)
            refused = writes.submit(f"call:{self.key}", self._write_refused, eng=self._eng,
                                    what="call row", conversation_id=self.conversation_id,
                                    comparison_id=self.comparison_id)
            if (await _settled(refused))[1]:
                raise asyncio.CancelledError
            return self
        self.status = "running"
        started = time.perf_counter()
        # The row goes in beside the request, through the write queue: neither waits for the
        # other, and the completion below is written after it.
        writes.submit(f"call:{self.key}", self._write_running, eng=self._eng, what="call row",
                      conversation_id=self.conversation_id, comparison_id=self.comparison_id)
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
        # The row is completed (and priced, off the loop) through the write queue; the call
        # waits for that write until it is written or "not saved yet".
        completing = writes.submit(f"call-end:{self.key}", self._write_complete,
                                   eng=self._eng, what="call row",
                                   conversation_id=self.conversation_id,
                                   comparison_id=self.comparison_id)
        written, cancelled = await _settled(completing)
        if not written and not self._priced:  # the database is stuck: price it all the same
            foreign_cancel |= (await aio.through_cancel(loop.run_in_executor(
                _readers, self._price)))[1]
        if foreign_cancel or cancelled:
            raise asyncio.CancelledError
        return self

    def run_sync(self, timeout: float | None = None) -> Call:
        """Make the call from synchronous code on the call loop and wait for its end."""
        return aio.run(self.run(), timeout)

    def _not_sent(self) -> Call:
        """Stopped before the request went out: nothing was sent or billed, and no row."""
        self._usage, self.cost = Usage(), Decimal(0)
        self.status, self.ended_at = "stopped", datetime.now(UTC)
        return self

    async def _check_budget(self, loop: asyncio.AbstractEventLoop) -> ProviderError | None:
        """The hard stop, read on the readers' pool under a deadline; a Stop cancels it."""
        self._checking = True
        try:
            return await asyncio.wait_for(loop.run_in_executor(_readers, self._admit),
                                          BUDGET_DEADLINE_S)
        except TimeoutError:
            log.warning("the budget could not be read within %.1f s", BUDGET_DEADLINE_S)
            url = str(self._eng.url) if self._eng is not None else store.database_url()
            try:
                budget.unchecked(self.user_id, self.endpoint, self.model, url=url)
            except budget.BudgetUnavailable as exc:
                return self._refusal(exc)
            return None
        finally:
            self._checking = False

    def _settle(self, status: str, error: ProviderError | None, elapsed: float) -> None:
        """The call's outcome, on the call itself, before its row is written."""
        reply = self.reply
        self._usage = reply.usage or reply.estimate_usage()
        self.ended_at = datetime.now(UTC)
        self._elapsed = reply.total if reply.total is not None else elapsed
        self.error = error
        self.status = status

    # -- reads (on the readers' pool) -----------------------------------------------------------

    def _engine(self) -> Engine:
        return self._eng or store.engine()

    def _price(self) -> None:
        """The call's cost, once (reads the deployment's prices: never on the call loop)."""
        if self._priced:
            return
        self._priced = True
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
            return self._refusal(exc)
        return None

    def _refusal(self, exc: budget.Refused) -> ProviderError:
        # No detail: the server said nothing, the sentence says what to do.
        return ProviderError(ErrorKind.BUDGET, hint=exc.hint, model=self.model,
                             url=self.endpoint.base_url, **exc.context)

    # -- the row (work for the write queue: one transaction each, keyed by self.key) -----------

    def _write_refused(self, conn: Connection) -> None:
        # One row, written whole: the call never went out, so nothing was used or billed.
        self.row_id, _ = self._keyed_insert(conn, _statements(conn.dialect.name).insert_whole,
                                            {**_identity(self), **self._final_row()})

    def _write_running(self, conn: Connection) -> None:
        row = {
            **_identity(self),
            "status": "running",
            "input_tokens": self.reply.estimate_usage().input_tokens,
            "estimated": True,
        }
        self.row_id, _ = self._keyed_insert(
            conn, _statements(conn.dialect.name).insert_running, row)

    def _write_complete(self, conn: Connection) -> None:
        self._price()  # on its first attempt; a retry writes the same cost
        statements = _statements(conn.dialect.name)
        row = self._final_row()
        if self.row_id is None:  # the first write failed for good: the row goes in whole
            self.row_id, inserted = self._keyed_insert(conn, statements.insert_whole,
                                                       {**_identity(self), **row})
            if inserted:
                return
        if conn.execute(statements.complete, {"row_id": self.row_id, **row}).rowcount == 0:
            self._complete_late(conn, statements, row)

    def _complete_late(self, conn: Connection, statements: _Statements,
                       row: dict[str, Any]) -> None:
        """The row is no longer running: completed late if another process marked it
        interrupted meanwhile (the rollup corrected in this transaction), else left alone:
        a row that is ok, stopped or error is never completed twice."""
        c = _calls.c
        old = conn.execute(select(c.user_id, c.started_at, c.endpoint, c.model, c.status,
                                  c.input_tokens, c.cached_input_tokens, c.output_tokens,
                                  c.reasoning_tokens, c.cost_usd)
                           .where(c.id == self.row_id).with_for_update()).first()
        if old is None or old.status != "interrupted":
            log.warning("call row %s is %s: not completed again", self.row_id,
                        "gone" if old is None else old.status)
            return
        if conn.execute(statements.complete_late, {"row_id": self.row_id, **row}).rowcount:
            store.adjust_rollup(conn, old, row)
            log.info("call row %s completed late, after it was marked interrupted",
                     self.row_id)

    def _keyed_insert(self, conn: Connection, statement: Any,
                      row: dict[str, Any]) -> tuple[int, bool]:
        """Insert the call's row once; its id, and whether this insert made it. Only a write
        tried again looks for the row first: the try before may have landed (a connection
        dropped at its commit), and the unique call_key makes a second row impossible."""
        self._inserts += 1
        if self._inserts > 1:
            found = conn.execute(select(_calls.c.id).where(
                _calls.c.call_key == self.key)).scalar()
            if found is not None:
                return found, False
        return conn.execute(statement, row).inserted_primary_key[0], True

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
        "call_key": call.key,
    }


async def _settled(pending: writes.Pending[Any]) -> tuple[bool, bool]:
    """Wait for a row's write until it is done (True) or "not saved yet" (False), even if the
    awaiting task is cancelled meanwhile; also whether a cancel came."""
    waiting = asyncio.wrap_future(pending.future)
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.wait({waiting}, timeout=writes.LOOK_S)
        except asyncio.CancelledError:
            cancelled = True
            continue
        if not waiting.done() and pending.unsaved:
            return False, cancelled
    waiting.exception()  # a write that failed for good is logged by the queue, not again here
    return True, cancelled


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
    while _live:
        await asyncio.sleep(every)
        beats: dict[Engine | None, list[dict[str, Any]]] = {}
        extras: dict[Engine | None, list[Callable[[Connection], object]]] = {}
        for call in list(_live):
            if call.row_id is None:
                continue
            # The output only: estimating a long prompt again on every beat would stall the loop.
            text, reasoning = call.reply.text, call.reply.reasoning
            tokens = estimate_tokens(text) + estimate_tokens(reasoning)
            beats.setdefault(call._eng, []).append({
                "row_id": call.row_id, "beat_tokens": tokens, "beat_chars": len(text)})
            if call.on_beat is not None:
                extras.setdefault(call._eng, []).append(
                    functools.partial(call.on_beat, text, reasoning))
        for eng, rows in beats.items():
            last = _beats.get(eng)
            if last is not None and not last.done():
                continue  # the database has not taken the last beat yet: no pile of them
            _beats[eng] = writes.submit(f"beat:{secrets.token_hex(8)}",
                                        functools.partial(_beat, rows, extras.get(eng, [])),
                                        eng=eng, what="heartbeat", keep=False)


def _beat(rows: list[dict[str, Any]], extras: list[Callable[[Connection], object]],
          conn: Connection) -> None:
    # A beat that cannot be written is dropped: the next one follows, and a minute of misses
    # is tolerated (STALE_AFTER_S).
    conn.execute(_statements(conn.dialect.name).beat, rows)
    for extra in extras:  # the answers' text so far
        extra(conn)


def mark_interrupted(eng: Engine | None = None, *, stale_after_s: float = STALE_AFTER_S,
                     endpoints: Iterable[Endpoint] = ()) -> int:
    """Turn running rows whose heartbeat stopped `stale_after_s` ago into `interrupted`.

    Their process died mid-call (a redeploy, a kill, a sleeping Cloud app): the row keeps the
    input tokens and the output it had at its last heartbeat, which is also when it ended,
    and is priced with them (estimated, flagged) like a stopped call; `endpoints` are the
    configured ones, whose pricing modes apply. A live call, of this process or another on
    the same database, beats every few seconds and is never marked. Staleness is measured on
    the database's clock, which also stamps every heartbeat, so machines whose clocks disagree
    never take each other's calls for dead. The answers those calls were for (a chat message,
    a compare answer) are settled with them: interrupted, their text so far kept. Returns how
    many call rows were marked.
    """
    eng = eng or store.engine()
    cutoff = store.db_now(eng.dialect.name, -stale_after_s)
    last_seen = func.coalesce(_calls.c.heartbeat_at, _calls.c.started_at)
    statement = (
        _calls.update()
        .where(_calls.c.status == "running", last_seen < cutoff)
        .values(status="interrupted", ended_at=last_seen)
        .returning(*_PRICED)
    )
    try:
        with eng.begin() as conn:
            rows = conn.execute(statement).all()
            pricing.price_logged(conn, rows, {e.name: e for e in endpoints}, eng=eng)
            _settle_answers(conn, cutoff)
    except OperationalError as exc:
        if not writes.transient(exc):
            raise
        log.warning("running calls not checked for staleness: the database is busy")
        return 0  # the next look marks them
    return len(rows)


# What pricing a logged row needs (core.pricing.price_logged).
_PRICED = (_calls.c.id, _calls.c.endpoint, _calls.c.provider, _calls.c.base_url, _calls.c.model,
           _calls.c.server_model, _calls.c.started_at, _calls.c.input_tokens,
           _calls.c.cached_input_tokens, _calls.c.output_tokens, _calls.c.reasoning_tokens)


def _settle_answers(conn: Connection, cutoff: Any) -> None:
    """Chat messages and compare answers still running whose call has ended at least
    `cutoff` ago (marked interrupted just now, or completed by a process that died before
    saving its answer), or that never got a call row and are as old: interrupted, with their
    call's row and the text of their last heartbeat. A live answer's call is running."""
    c = _calls.c
    for table, born in ((store.messages, store.messages.c.created_at),
                        (store.comparison_answers, _turn_created())):
        key = table.c.call_key
        call = select(c.id).where(c.call_key == key).scalar_subquery()
        ended = select(c.id).where(
            c.call_key == key, c.status != "running",
            func.coalesce(c.ended_at, c.heartbeat_at, c.started_at) < cutoff).exists()
        no_call = ~select(c.id).where(c.call_key == key).exists()
        conn.execute(table.update().where(
            table.c.status == "running", or_(ended, and_(no_call, born < cutoff)),
        ).values(status="interrupted", call_id=call))


def _turn_created() -> Any:
    """When the compare turn of an answer was sent (answers have no time of their own)."""
    t, a = store.comparison_turns, store.comparison_answers
    return select(t.c.created_at).where(t.c.comparison_id == a.c.comparison_id,
                                        t.c.turn == a.c.turn).scalar_subquery()
