"""The call log as a dashboard's data: filters, one page of rows, totals, charts, exports.

Everything is asked of the database, filtered by user: totals and charts come from one GROUP BY
over hourly UTC buckets (a year of a million calls is a few ten thousand groups), rolled up to
the browser's days here in pandas; percentiles read three narrow columns; the ledger is one
sorted, paged query. No function here ever loads the whole log, except an export, which is
refused above EXPORT_LIMIT rows.

One concern, kept whole (~680 lines): every read of the call log for the usage page, with the
rollup those reads share.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter, sleep
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from sqlalchemy import Engine, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError

from core import config, pricing, store

log = logging.getLogger(__name__)
c = store.calls.c
PAGE_SIZES = (25, 50, 100, 500)
# An export above this many rows would build a frame and a file near the page's memory goal
# (600 MB); measured in bench/usage_page.py. The user is told to narrow the filters.
EXPORT_LIMIT = 250_000
# Percentiles of speed are taken over at most this many of the latest finished calls.
SPEED_SAMPLE = 20_000
PRESETS = ("today", "7d", "month", "30d", "all", "custom")
# Columns the ledger can be sorted by (name on screen -> column in the database).
SORTABLE = {
    "time": c.started_at, "cost": c.cost_usd, "input": c.input_tokens,
    "output": c.output_tokens, "ttft": c.ttft_s, "total": c.total_s, "model": c.model,
}
# What a row of the ledger and of an export holds. Not base_url (a URL may carry a password)
# nor error_detail (long; the kind says enough in a table).
LEDGER_COLUMNS = (
    c.id, c.started_at, c.source, c.conversation_id, c.comparison_id, c.endpoint, c.provider,
    c.model, c.server_model, c.status, c.error_kind, c.input_tokens, c.cached_input_tokens,
    c.output_tokens, c.reasoning_tokens, c.estimated, c.cost_usd, c.ttft_s, c.total_s,
)


class UsageError(ValueError):
    """A request the page cannot answer; `key` names the i18n sentence, `context` fills it."""

    def __init__(self, key: str, **context: Any) -> None:
        super().__init__(key)
        self.key = key
        self.context = context


@dataclass(frozen=True)
class Filters:
    """What the page shows: a UTC time range [start, end) and the chosen values of each facet.

    An empty tuple means "all".
    """

    start: datetime | None = None
    end: datetime | None = None
    endpoints: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()


def zone(name: str | None) -> ZoneInfo:
    """The browser's time zone, or UTC when it is missing or unknown (AppTest has none)."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def date_range(preset: str, tz: ZoneInfo, *, today: date | None = None,
               custom: tuple[date, date] | None = None) -> tuple[datetime | None, datetime | None]:
    """The UTC [start, end) of a preset, cut at midnight in the browser's zone.

    "custom" takes a (first day, last day) pair, both included; a last day before the first
    raises UsageError.
    """
    today = today or datetime.now(tz).date()
    if preset == "all":
        return None, None
    if preset == "custom":
        if not custom:
            return None, None
        first, last = custom
        if last < first:
            raise UsageError("usage.err_range", start=first.isoformat(), end=last.isoformat())
    elif preset == "today":
        first, last = today, today
    elif preset == "7d":
        first, last = today - timedelta(days=6), today
    elif preset == "30d":
        first, last = today - timedelta(days=29), today
    elif preset == "month":
        first, last = today.replace(day=1), today
    else:
        raise UsageError("usage.err_preset", preset=preset)

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(0), tz).astimezone(UTC)

    return midnight(first), midnight(last + timedelta(days=1))


def hidden_calls(user_id: str) -> Any:
    """The ids of the user's calls in a blind comparison not voted on yet, as a subquery.

    The same rows as `core.compare.hidden_call_ids`, asked inside every query of the page:
    the ledger, totals, charts and exports would otherwise name a blind answer's model.
    """
    cm, a, v = store.comparisons, store.comparison_answers, store.comparison_votes
    voted = select(v.c.comparison_id).where(v.c.user_id == user_id)
    return (select(a.c.call_id).join(cm, cm.c.id == a.c.comparison_id)
            .where(cm.c.user_id == user_id, cm.c.blind.is_(True), a.c.call_id.is_not(None),
                   cm.c.id.not_in(voted)))


def _where(user_id: str, f: Filters) -> Any:
    # Only a row of a comparison can be hidden: the others skip the subquery.
    conditions = [c.user_id == user_id,
                  or_(c.comparison_id.is_(None), c.id.not_in(hidden_calls(user_id)))]
    if f.start is not None:
        conditions.append(c.started_at >= f.start)
    if f.end is not None:
        conditions.append(c.started_at < f.end)
    for column, chosen in ((c.endpoint, f.endpoints), (c.model, f.models),
                           (c.source, f.sources), (c.status, f.statuses)):
        if chosen:
            conditions.append(column.in_(chosen))
    return and_(*conditions)


def _utc(value: Any) -> pd.Series:
    # SQLite hands back naive UTC datetimes, PostgreSQL aware ones: one kind after this.
    return pd.to_datetime(value, utc=True)


def facets(user_id: str, f: Filters, *, eng: Engine | None = None) -> pd.DataFrame:
    """Each (endpoint, model) of the user's log in the filters' time range, with its calls.

    The endpoint, model, page and status choices are left out, so the lists the user picks
    from do not shrink to what they picked.
    """
    eng = eng or store.engine()
    return with_urls(user_id, facets_of(hourly(user_id, Filters(f.start, f.end), eng=eng)),
                     eng=eng)


def with_urls(user_id: str, pairs: pd.DataFrame, *, eng: Engine | None = None) -> pd.DataFrame:
    """(endpoint, model, calls) pairs with the provider and URL of one of their rows each."""
    one = (select(c.provider, c.base_url)
           .where(c.user_id == user_id, c.endpoint == bindparam("e"), c.model == bindparam("m"))
           .limit(1))
    rows = []
    with (eng or store.engine()).connect() as conn:
        for endpoint, model, n in pairs[["endpoint", "model", "calls"]].itertuples(index=False):
            provider, base_url = conn.execute(one, {"e": endpoint, "m": model}).one()
            rows.append((endpoint, model, provider, base_url, n))
    return pd.DataFrame(rows, columns=list(FACET_COLUMNS))


def narrowed(user_id: str, f: Filters, ranged: pd.DataFrame, *,
             eng: Engine | None = None) -> pd.DataFrame:
    """The hourly buckets of `f`, from those of its time range when that is enough."""
    if f.sources or f.statuses:
        return hourly(user_id, f, eng=eng)
    keep = pd.Series(True, index=ranged.index)
    if f.endpoints:
        keep &= ranged["endpoint"].isin(f.endpoints)
    if f.models:
        keep &= ranged["model"].isin(f.models)
    return ranged[keep].reset_index(drop=True)


def has_calls(user_id: str, *, eng: Engine | None = None) -> bool:
    """Whether the user's log holds any call (one indexed lookup)."""
    with (eng or store.engine()).connect() as conn:
        return conn.execute(select(c.id).where(c.user_id == user_id).limit(1)).first() \
            is not None


def facets_of(hours: pd.DataFrame) -> pd.DataFrame:
    """The (endpoint, model) pairs and their calls read off hourly buckets."""
    if hours.empty:
        return pd.DataFrame(columns=["endpoint", "model", "calls"])
    return hours.groupby(["endpoint", "model"], as_index=False).agg(calls=("calls", "sum"))


def has_facet_choice(f: Filters) -> bool:
    """Whether the filters narrow more than the time range."""
    return bool(f.endpoints or f.models or f.sources or f.statuses)


def _hour(eng: Engine) -> Any:
    if eng.dialect.name == "sqlite":  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC
        return func.substr(c.started_at, 1, 13)
    return func.to_char(func.timezone("UTC", c.started_at), "YYYY-MM-DD HH24")


FACET_COLUMNS = ("endpoint", "model", "provider", "base_url", "calls")
HOURLY_COLUMNS = ("hour", "endpoint", "model", "calls", "input", "cached", "output",
                  "reasoning", "cost", "priced", "errors")
NUMBERS = HOURLY_COLUMNS[3:]


def _hourly_raw(user_id: str, f: Filters, eng: Engine, *, only: Any = None) -> pd.DataFrame:
    hour = _hour(eng).label("hour")
    # Only columns of the covering index ix_calls_user_rollup: the table itself is not read.
    query = (select(hour, c.endpoint, c.model, func.count(), func.sum(c.input_tokens),
                    func.sum(c.cached_input_tokens), func.sum(c.output_tokens),
                    func.sum(c.reasoning_tokens), func.sum(c.cost_usd), func.count(c.cost_usd),
                    func.sum(case((c.status == "error", 1), else_=0)))
             .where(_where(user_id, f) if only is None else and_(*_range(user_id, f), only))
             .group_by(hour, c.endpoint, c.model))
    with eng.connect() as conn:
        # Plain tuples: pandas inspects each SQLAlchemy Row one by one (0.6 s for 50,000).
        return pd.DataFrame(list(map(tuple, conn.execute(query))), columns=list(HOURLY_COLUMNS))


def _range(user_id: str, f: Filters) -> list[Any]:
    conditions = [c.user_id == user_id]
    if f.start is not None:
        conditions.append(c.started_at >= f.start)
    if f.end is not None:
        conditions.append(c.started_at < f.end)
    for column, chosen in ((c.endpoint, f.endpoints), (c.model, f.models)):
        if chosen:
            conditions.append(column.in_(chosen))
    return conditions


# Hours are rolled up once they are this far in the past (a call's row settles within the
# heartbeat's staleness, see core.metering.STALE_AFTER_S).
SETTLE = timedelta(minutes=62)
# A piece of the rollup holds the database's write lock for about PIECE_S: the rows per
# piece adapt to the machine, so a first build over a million calls never keeps other writers
# (a call's row, a saved answer) waiting long (bench/README.md: the longest hold).
# Aimed well below the 0.5 s goal: on a loaded machine a piece takes several times longer.
PIECE_S = 0.1
PIECE_ROWS = (1_000, 500_000)  # the fewest and the most calls a piece is sized for
_piece_rows = 10_000  # learned as pieces are built
# Between two pieces the lock is left free this long: a writer waiting on SQLite's busy
# handler looks again at most every 100 ms, and a shorter gap would starve it.
PIECE_GAP_S = 0.11


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def roll_up(user_id: str, *, eng: Engine | None = None, now: datetime | None = None,
            holds: list[float] | None = None) -> datetime:
    """Add the user's newly settled hours to `calls_hourly`; returns the instant rolled up to.

    An hour is settled when it is over by SETTLE and no call of the user that started in it or
    later is still running. Each page draw adds the hours since the last one (one small
    piece); the first draw over an old log builds them all, in pieces of whole hours that each
    hold the write lock for about PIECE_S, with the lock left free between them
    (`holds` gets each piece's seconds). Re-pricing
    forgets the rollup (store.forget_rollup); a late completion corrects its hour
    (store.adjust_rollup); votes are applied at read time (hidden rows subtracted).
    """
    eng = eng or store.engine()
    r = store.calls_rolled
    until = _floor_hour((now or datetime.now(UTC)) - SETTLE)
    while True:
        with eng.connect() as conn:  # reads only: no lock is held while choosing the work
            running = conn.execute(select(func.min(c.started_at)).where(
                c.user_id == user_id, c.status == "running")).scalar()
            done = conn.execute(select(r.c.until).where(r.c.user_id == user_id)).scalar()
            first = None if done is not None else conn.execute(
                select(func.min(c.started_at)).where(c.user_id == user_id)).scalar()
        if running is not None:
            until = min(until, _floor_hour(_utc(running).to_pydatetime()))
        if done is None:
            start = until if first is None else min(until, _floor_hour(
                _utc(first).to_pydatetime()))
            done = _mark_start(eng, user_id, start)
        done = _utc(done).to_pydatetime()
        while done is not None and done < until:
            done = _roll_piece(eng, user_id, done, _piece_end(eng, user_id, done, until),
                               holds)
            if done is not None and done < until:
                sleep(PIECE_GAP_S)
        if done is not None:  # else the rollup was forgotten meanwhile: start again
            return done


def _mark_start(eng: Engine, user_id: str, start: datetime) -> datetime:
    # The marker goes in first, alone: every piece and every late completion then lock it.
    r = store.calls_rolled
    try:
        with eng.begin() as conn:
            conn.execute(r.insert().values(user_id=user_id, until=start))
        return start
    except IntegrityError:  # another tab started the same rollup: go on from where it is
        with eng.connect() as conn:
            return conn.execute(select(r.c.until).where(r.c.user_id == user_id)).scalar_one()


def _piece_end(eng: Engine, user_id: str, start: datetime, until: datetime) -> datetime:
    """The end of the next piece: about `_piece_rows` calls after `start`, on a whole hour."""
    with eng.connect() as conn:
        nth = conn.execute(select(c.started_at).where(
            c.user_id == user_id, c.started_at >= start, c.started_at < until)
            .order_by(c.started_at).limit(1).offset(_piece_rows)).scalar()
    if nth is None:
        return until
    # An hour is rolled in one piece, however many calls it holds.
    end = max(_floor_hour(_utc(nth).to_pydatetime()), start + timedelta(hours=1))
    return min(end, until)


def _roll_piece(eng: Engine, user_id: str, start: datetime, end: datetime,
                holds: list[float] | None) -> datetime | None:
    """Roll the hours [start, end) in one transaction; the new `until`, or None if the
    rollup was forgotten meanwhile."""
    global _piece_rows
    h, r = store.calls_hourly, store.calls_rolled
    with eng.begin() as conn:
        # Written first, so the lock is taken before anything is read: the write lock on
        # SQLite, the marker's row on PostgreSQL (a late completion waits on it).
        if not conn.execute(r.update().where(r.c.user_id == user_id)
                            .values(until=r.c.until)).rowcount:
            return None
        locked = perf_counter()
        done = _utc(conn.execute(select(r.c.until).where(r.c.user_id == user_id))
                    .scalar_one()).to_pydatetime()
        if done >= end:  # another tab rolled these hours meanwhile
            return done
        start = max(start, done)
        hour = _hour(eng)
        rows = (select(c.user_id, hour, c.endpoint, c.model, func.count(),
                       func.coalesce(func.sum(c.input_tokens), 0),
                       func.coalesce(func.sum(c.cached_input_tokens), 0),
                       func.coalesce(func.sum(c.output_tokens), 0),
                       func.coalesce(func.sum(c.reasoning_tokens), 0),
                       func.coalesce(func.sum(c.cost_usd), 0), func.count(c.cost_usd),
                       func.sum(case((c.status == "error", 1), else_=0)))
                .where(c.user_id == user_id, c.started_at >= start, c.started_at < end)
                .group_by(c.user_id, hour, c.endpoint, c.model))
        conn.execute(h.insert().from_select(
            ["user_id", "hour", "endpoint", "model", "calls", "input", "cached", "output",
             "reasoning", "cost", "priced", "errors"], rows))
        conn.execute(r.update().where(r.c.user_id == user_id).values(until=end))
    held = perf_counter() - locked
    if holds is not None:
        holds.append(held)
    # The next piece is sized so that it holds the lock about PIECE_S.
    fewest, most = PIECE_ROWS
    _piece_rows = int(min(max(_piece_rows * min(max(PIECE_S / max(held, 1e-3), 0.25), 2.0),
                              fewest), most))
    return end


def _whole_hours(f: Filters) -> bool:
    return all(t is None or (t.minute, t.second, t.microsecond) == (0, 0, 0)
               for t in (f.start, f.end))


def _hour_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H")


def hourly(user_id: str, f: Filters, *, eng: Engine | None = None) -> pd.DataFrame:
    """Calls, tokens, cost and errors per UTC hour, endpoint and model.

    Settled hours come from the rollup table, the last hour or so from the log itself, and
    rows still hidden (blind comparisons without a vote) are taken off. A choice of page or
    status, or a range not cut on whole UTC hours (India's midnight), asks the log directly.
    """
    eng = eng or store.engine()
    until = None
    if not (f.sources or f.statuses or not _whole_hours(f)):
        try:
            until = roll_up(user_id, eng=eng)
        except (OperationalError, IntegrityError):
            # Locked by another writer, or another tab rolled the same hours at once: this
            # draw asks the log directly, the next one uses the rollup.
            log.warning("hourly rollup skipped for this draw", exc_info=True)
    if until is None:
        frame = _hourly_raw(user_id, f, eng)
    else:
        h = store.calls_hourly.c
        cond = [h.user_id == user_id]
        if f.start is not None:
            cond.append(h.hour >= _hour_text(f.start))
        rolled_end = until if f.end is None else min(until, f.end)
        cond.append(h.hour < _hour_text(rolled_end))
        for column, chosen in ((h.endpoint, f.endpoints), (h.model, f.models)):
            if chosen:
                cond.append(column.in_(chosen))
        with eng.connect() as conn:
            rolled = pd.DataFrame(list(map(tuple, conn.execute(
                select(h.hour, h.endpoint, h.model, h.calls, h.input, h.cached, h.output,
                       h.reasoning, h.cost, h.priced, h.errors).where(*cond)))),
                columns=list(HOURLY_COLUMNS))
        start = until if f.start is None else max(until, f.start)
        recent = (_hourly_raw(user_id, Filters(start, f.end, f.endpoints, f.models), eng)
                  if f.end is None or start < f.end else rolled.iloc[:0])
        # Hidden rows are in the rollup: their sums come off (a few rows, by id).
        before = Filters(f.start, rolled_end, f.endpoints, f.models)
        with eng.connect() as conn:  # usually none: then the log is not read at all
            ids = conn.execute(hidden_calls(user_id)).scalars().all()
        hidden = (_hourly_raw(user_id, before, eng, only=c.id.in_(ids)) if ids
                  else rolled.iloc[:0])
        parts = [p for p in (rolled, recent) if not p.empty]
        if not hidden.empty:
            hidden[list(NUMBERS)] = -hidden[list(NUMBERS)].apply(pd.to_numeric).fillna(0)
            parts.append(hidden)
        frame = (pd.concat(parts, ignore_index=True) if parts
                 else pd.DataFrame(columns=list(HOURLY_COLUMNS)))
    frame["cost"] = pd.to_numeric(frame["cost"]).fillna(0.0).astype(float)
    for name in ("calls", "input", "cached", "output", "reasoning", "priced", "errors"):
        frame[name] = pd.to_numeric(frame[name]).fillna(0).astype("int64")
    if len(frame):
        frame = frame.groupby(["hour", "endpoint", "model"], as_index=False)[list(NUMBERS)].sum()
        frame = frame[frame["calls"] > 0].reset_index(drop=True)
    frame["hour"] = pd.to_datetime(frame["hour"], format="%Y-%m-%d %H", utc=True)
    return frame


def daily(hours: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    """The hourly buckets rolled up to days and model in the browser's zone.

    Zones whose offset is not whole hours (India, Nepal) put up to 45 minutes of a day on its
    neighbour; the totals stay exact.
    """
    if hours.empty:
        return pd.DataFrame(columns=["day", "model", *NUMBERS])
    local_day = hours["hour"].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    return (hours.assign(day=local_day)[["day", "model", *NUMBERS]]
            .groupby(["day", "model"], as_index=False).sum())


@dataclass(frozen=True)
class Totals:
    """The figures above the charts."""

    calls: int = 0
    input: int = 0
    cached: int = 0
    output: int = 0
    reasoning: int = 0
    cost_usd: float = 0.0
    priced: int = 0  # calls whose cost is known (0 included)
    errors: int = 0
    by_model: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)

    @property
    def unpriced(self) -> int:
        """Calls without a price: their cost is not in cost_usd."""
        return self.calls - self.priced

    @property
    def error_rate(self) -> float:
        """Errors over calls, 0 for none."""
        return self.errors / self.calls if self.calls else 0.0


def totals(hours: pd.DataFrame) -> Totals:
    """The range's totals, summed from the hourly buckets (no second pass over the log)."""
    if hours.empty:
        return Totals()
    sums = hours[list(NUMBERS)].sum()
    by_model = (hours[["model", *NUMBERS]].groupby("model", as_index=False).sum()
                .sort_values("cost", ascending=False))
    return Totals(int(sums["calls"]), int(sums["input"]), int(sums["cached"]),
                  int(sums["output"]), int(sums["reasoning"]), float(sums["cost"]),
                  int(sums["priced"]), int(sums["errors"]), by_model)


def speed(user_id: str, f: Filters, *, eng: Engine | None = None) -> pd.DataFrame:
    """Median and p95 of time to first token and of output tokens/s, per model.

    Over the latest SPEED_SAMPLE finished calls of the range (exact below that): three narrow
    columns read newest first along the (user_id, started_at) index, so a year of a million
    calls costs what a busy week does.
    """
    generating = c.total_s - c.ttft_s
    tps = case((and_(generating > 0, c.output_tokens > 0), c.output_tokens / generating),
               else_=None)
    query = (select(c.model, c.ttft_s, tps).where(_where(user_id, f), c.status == "ok")
             .order_by(c.started_at.desc()).limit(SPEED_SAMPLE))
    with (eng or store.engine()).connect() as conn:
        found = conn.execute(query).all()
    frame = pd.DataFrame(found, columns=["model", "ttft", "tps"])
    frame[["ttft", "tps"]] = frame[["ttft", "tps"]].astype("float32")
    grouped = frame.groupby("model")
    result = pd.DataFrame({
        "calls": grouped.size(),
        "ttft_p50": grouped["ttft"].median(), "ttft_p95": grouped["ttft"].quantile(0.95),
        "tps_p50": grouped["tps"].median(), "tps_p95": grouped["tps"].quantile(0.95),
    })
    return result.reset_index().sort_values("calls", ascending=False, ignore_index=True)


def _frame(found: list[Any], tz: ZoneInfo) -> pd.DataFrame:
    frame = pd.DataFrame(found, columns=[col.name for col in LEDGER_COLUMNS])
    frame["started_at"] = _utc(frame["started_at"]).dt.tz_convert(tz)
    frame["cost_usd"] = pd.to_numeric(frame["cost_usd"]).astype("Float64")
    generating = frame["total_s"] - frame["ttft_s"]
    frame["tokens_per_s"] = (frame["output_tokens"] / generating).where(
        (generating > 0) & (frame["output_tokens"] > 0))
    frame["estimated"] = frame["estimated"].astype(bool)
    return frame


def ledger(user_id: str, f: Filters, tz: ZoneInfo, *, sort: str = "time",
           descending: bool = True, page: int = 1, page_size: int = 50,
           eng: Engine | None = None) -> pd.DataFrame:
    """One page of the filtered ledger, sorted in the database over the whole filtered set."""
    column = SORTABLE.get(sort, c.started_at)
    order = column.desc() if descending else column.asc()
    # NULLs (unknown cost, no first token) last in both directions, the id breaks ties. The
    # time column has none, and leaving the test out lets the index do the sorting.
    keys = [order, c.id.desc()] if column is c.started_at else [column.is_(None), order, c.id]
    # The page's ids are chosen on the covering index, then only their rows are read.
    ids = (select(c.id).where(_where(user_id, f)).order_by(*keys)
           .limit(page_size).offset(max(page - 1, 0) * page_size))
    with (eng or store.engine()).connect() as conn:
        chosen = conn.execute(ids).scalars().all()
        found = {r.id: r for r in conn.execute(select(*LEDGER_COLUMNS)
                                               .where(c.id.in_(chosen)))} if chosen else {}
    return _frame([found[i] for i in chosen if i in found], tz)


def dearest(user_id: str, f: Filters, tz: ZoneInfo, n: int = 10, *,
            eng: Engine | None = None) -> pd.DataFrame:
    """The n most expensive calls of the range."""
    frame = ledger(user_id, f, tz, sort="cost", page_size=n, eng=eng)
    return frame[frame["cost_usd"].notna()]


def count(user_id: str, f: Filters, *, eng: Engine | None = None) -> int:
    """How many calls the filters keep."""
    with (eng or store.engine()).connect() as conn:
        return int(conn.execute(select(func.count()).where(_where(user_id, f))).scalar_one())


def _export_frame(user_id: str, f: Filters, tz: ZoneInfo, eng: Engine | None) -> pd.DataFrame:
    n = count(user_id, f, eng=eng)
    if n > EXPORT_LIMIT:
        raise UsageError("usage.export_too_big", n=f"{n:,}", limit=f"{EXPORT_LIMIT:,}")
    query = select(*LEDGER_COLUMNS).where(_where(user_id, f)).order_by(c.started_at, c.id)
    with (eng or store.engine()).connect() as conn:
        found = conn.execute(query).all()
    frame = _frame(found, tz)
    frame.insert(2, "started_at_utc", frame["started_at"].dt.tz_convert(UTC))
    return frame


def export_csv(user_id: str, f: Filters, tz: ZoneInfo, *, eng: Engine | None = None) -> bytes:
    """The filtered ledger as CSV (see `csv_bytes`)."""
    return csv_bytes(_export_frame(user_id, f, tz, eng))


# What a spreadsheet reads as the start of a formula (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each text cell that starts like a formula prefixed with a single quote,
    so a spreadsheet shows it as text (a server can name its model `=HYPERLINK(...)`).
    Only text cells change: a negative number stays a number."""
    safe = frame.copy()
    for name in safe.columns:
        column = safe[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            continue
        try:  # a cell that is not text (None, a number in an object column) gives False
            risky = column.str.startswith(FORMULA_STARTS, na=False).astype(bool)
        except AttributeError:  # an object column of numbers (Decimal) or other values
            continue
        if risky.any():
            safe[name] = column.where(~risky, "'" + column.where(risky, ""))
    return safe


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The one CSV writer of the app: UTF-8 with a BOM (so Excel reads Chinese model names),
    no index, and text safe in a spreadsheet (`spreadsheet_text`). Every text cell is
    quoted: pandas leaves a carriage return unquoted, and a spreadsheet would start a new row
    there, whose first cell could be a formula again."""
    buffer = io.StringIO()
    spreadsheet_text(frame).to_csv(buffer, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return b"\xef\xbb\xbf" + buffer.getvalue().encode()


def export_parquet(user_id: str, f: Filters, tz: ZoneInfo, *,
                   eng: Engine | None = None) -> bytes:
    """The filtered ledger as Parquet, types kept."""
    frame = _export_frame(user_id, f, tz, eng)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


PRICE_COLUMNS = ("endpoint", "model", "input", "cached_input", "output", "currency", "source")


def priced_models(seen: pd.DataFrame | None, configured: list[Any]) -> pd.DataFrame:
    """The (endpoint, model, provider, base_url) pairs the Prices tab lists: those in the log
    (`seen`, None before the first call), then each configured endpoint's models (its list, its
    preset's defaults, its default model), so a price can be set before the first call."""
    rows = [] if seen is None else [
        tuple(r) for r in seen[["endpoint", "model", "provider", "base_url"]]
        .itertuples(index=False)]
    for e in configured:
        preset = config.PRESETS.get(e.preset)
        models = [*e.models, *(preset.default_models if preset else ()),
                  *([e.default_model] if e.default_model else [])]
        rows += [(e.name, m, e.kind, e.base_url) for m in models]
    return pd.DataFrame(rows, columns=["endpoint", "model", "provider", "base_url"]) \
        .drop_duplicates(["endpoint", "model"])


def prices_in_force(seen: pd.DataFrame, configured: dict[str, Any], *,
                    eng: Engine | None = None) -> pd.DataFrame:
    """The price a new call of each (endpoint, model) would be charged, per 1M tokens.

    `seen` has the columns endpoint, model, provider, base_url; `configured` maps endpoint
    names to the configured Endpoint (a row's own URL stands in for one removed since). Prices
    are numbers (None where there is none); `source` is where the price comes from (yours,
    catalog, vendor, free, none) and `vendor` the vendor table's entry behind a vendor price.
    """
    rows = []
    for r in seen.drop_duplicates(["endpoint", "model"]).itertuples():
        endpoint = pricing.endpoint_from_log(r.endpoint, r.provider, r.base_url, configured)
        price, source = pricing.price_in_force(endpoint, r.model, eng=eng)

        def number(value: Any) -> float | None:
            return None if value is None else float(value)

        rows.append((r.endpoint, r.model, number(price and price.input),
                     number(price and price.cached_input), number(price and price.output),
                     price.currency if price else "USD", source,
                     pricing.vendor_price(endpoint, r.model) if source == "vendor" else None))
    table = pd.DataFrame(rows, columns=[*PRICE_COLUMNS, "vendor"])
    for name in ("input", "cached_input", "output"):
        table[name] = table[name].astype("float64")
    return table.sort_values(["endpoint", "model"], ignore_index=True)


def _cell(value: Any) -> Any:
    # An edited cell compared with its old value: NaN, None and "" are all "empty".
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.strip() or None if isinstance(value, str) else value


def changed_prices(before: pd.DataFrame, after: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """The rows a user edited, checked: [(endpoint, model, Price)]; PriceError on a bad one
    (its context names the row).

    All rows are checked before any is returned, so one bad cell saves nothing.
    """
    found = []
    keys = ["input", "cached_input", "output", "currency"]
    for (_, old), (_, new) in zip(before.iterrows(), after.iterrows(), strict=True):
        if [_cell(old[k]) for k in keys] == [_cell(new[k]) for k in keys]:
            continue
        found.append((new["endpoint"], new["model"],
                      pricing.parse_price(new["input"], new["cached_input"], new["output"],
                                          new["currency"],
                                          row=f"{new['model']} · {new['endpoint']}")))
    return found
