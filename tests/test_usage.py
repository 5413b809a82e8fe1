"""Usage data, pricing per endpoint and the budget, against a real SQLite file."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from core import budget, pricing, store, usage
from core.config import make_endpoint
from core.metering import Call
from core.providers import Message, Params
from core.providers.base import Usage
from tests.conftest import API_KEY
from tests.fakes import FakeOpenAIServer


def add(eng, user="ana", at=None, model="gpt-4o-mini", cost=Decimal("0.01"), status="ok",
        **extra):
    row = dict(user_id=user, started_at=at or datetime.now(UTC), source="chat",
               endpoint="OpenAI", provider="openai", base_url="https://api.openai.com/v1",
               model=model, status=status, input_tokens=100, output_tokens=10, cost_usd=cost,
               ttft_s=0.5, total_s=1.5)
    row.update(extra)
    with eng.begin() as conn:
        conn.execute(store.calls.insert(), row)


def test_empty_ledger_gives_zero_totals_and_empty_frames(db):
    hours = usage.hourly("ana", usage.Filters(), eng=db)
    assert usage.totals(hours).calls == 0
    assert usage.daily(hours, usage.zone(None)).empty
    assert usage.ledger("ana", usage.Filters(), usage.zone(None), eng=db).empty
    assert usage.speed("ana", usage.Filters(), eng=db).empty


def test_days_are_cut_in_the_browser_zone_and_totals_leave_unpriced_out(db):
    # 23:30 UTC on the 1st is the 2nd in Shanghai (UTC+8).
    add(db, at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC), cost=Decimal("0.5"))
    add(db, at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC), model='odd/"模型" name', cost=None)
    add(db, user="bo", at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC))  # someone else's
    hours = usage.hourly("ana", usage.Filters(), eng=db)
    shanghai = usage.daily(hours, usage.zone("Asia/Shanghai"))
    assert sorted(d.day.day for d in shanghai.itertuples()) == [1, 2]
    utc = usage.daily(hours, usage.zone(None))
    assert {d.day.day for d in utc.itertuples()} == {1}
    totals = usage.totals(hours)
    assert (totals.calls, totals.priced, totals.unpriced) == (2, 1, 1)
    assert totals.cost_usd == pytest.approx(0.5)
    page = usage.ledger("ana", usage.Filters(models=('odd/"模型" name',)),
                        usage.zone("Asia/Shanghai"), eng=db)
    assert list(page["model"]) == ['odd/"模型" name'] and page["cost_usd"].isna().all()


def test_date_ranges_follow_the_zone_and_refuse_end_before_start():
    tz = usage.zone("Asia/Shanghai")
    start, end = usage.date_range("today", tz, today=date(2026, 3, 2))
    assert start == datetime(2026, 3, 1, 16, tzinfo=UTC) and end - start == timedelta(days=1)
    with pytest.raises(usage.UsageError) as err:
        usage.date_range("custom", tz, custom=(date(2026, 3, 5), date(2026, 3, 1)))
    assert err.value.key == "usage.err_range"
    assert usage.zone("Not/AZone").key == "UTC"


def test_ledger_sorts_and_pages_over_the_whole_filtered_set(db):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(30):
        add(db, at=base + timedelta(minutes=i), cost=Decimal(i) / 100)
    add(db, at=base, cost=None)  # unknown cost sorts last
    second = usage.ledger("ana", usage.Filters(), usage.zone(None), sort="cost", page=2,
                          page_size=10, eng=db)
    assert list(second["cost_usd"]) == pytest.approx([i / 100 for i in range(19, 9, -1)])
    dearest = usage.dearest("ana", usage.Filters(), usage.zone(None), n=3, eng=db)
    assert list(dearest["cost_usd"]) == pytest.approx([0.29, 0.28, 0.27])


def test_export_is_refused_above_the_limit_with_a_sentence(db, monkeypatch):
    for _ in range(3):
        add(db)
    csv = usage.export_csv("ana", usage.Filters(), usage.zone(None), eng=db).decode("utf-8-sig")
    assert len(csv.strip().splitlines()) == 4 and "base_url" not in csv
    assert usage.export_parquet("ana", usage.Filters(), usage.zone(None), eng=db)[:4] == b"PAR1"
    monkeypatch.setattr(usage, "EXPORT_LIMIT", 2)
    with pytest.raises(usage.UsageError) as err:
        usage.export_csv("ana", usage.Filters(), usage.zone(None), eng=db)
    assert err.value.key == "usage.export_too_big" and err.value.context["n"] == "3"


def test_cached_input_is_priced_at_the_cached_rate_through_the_fake(db):
    # 1,000 input (the fake counts chars // 4 + 4 per message), 400 cached, 100 output.
    with FakeOpenAIServer(api_key=API_KEY, tokens=100, cached_tokens=400) as server:
        endpoint = make_endpoint("gw", "custom", base_url=server.url, api_key=API_KEY,
                                 pricing="catalog")
        messages = [Message("system", "x" * 3966), Message("user", "hi")]
        call = Call(endpoint, "gpt-4o-mini", messages, Params(), user_id="ana").run_sync()
    assert (call.usage.input_tokens, call.usage.cached_input_tokens,
            call.usage.output_tokens) == (1000, 400, 100)
    assert call.cost == Decimal("0.00018")


def test_pricing_is_decided_per_endpoint(db):
    used = Usage(input_tokens=1_000_000, output_tokens=0)
    now = datetime.now(UTC)
    gateway = make_endpoint("gw", "custom", base_url="http://one-api:3000/v1", api_key="k" * 16)
    assert pricing.cost(gateway, "gpt-4o-mini", used, now, user_id="ana") == Decimal("0.15")
    assert pricing.cost(gateway, "my-own-model", used, now, user_id="ana") == 0  # private host
    public = make_endpoint("p", "custom", base_url="https://llm.example.com/v1",
                           api_key="k" * 16)
    assert pricing.cost(public, "my-own-model", used, now, user_id="ana") is None
    free = make_endpoint("f", "custom", base_url="https://llm.example.com/v1", api_key="k" * 16,
                         pricing="free")
    assert pricing.cost(free, "gpt-4o", used, now, user_id="ana") == 0
    pricing.set_user_price("ana", "*", "qwen-max", pricing.Price(Decimal("20"), Decimal("60"),
                                                                 currency="CNY"))
    pricing.set_cny_per_usd("ana", "8")
    qwen = make_endpoint("Qwen", "qwen", api_key="k" * 16)
    assert pricing.cost(qwen, "qwen-max", used, now, user_id="ana") == Decimal("2.5")
    assert pricing.price_in_force(qwen, "qwen-max", user_id="ana")[1] == "yours"
    own = make_endpoint("o", "openai", api_key="k" * 16, pricing="own")
    assert pricing.cost(own, "gpt-4o-mini", used, now, user_id="ana") is None


@pytest.mark.parametrize(("value", "key"), [("-1", "prices.err_negative"),
                                            ("abc", "prices.err_number"),
                                            ("1e9", "prices.err_huge"),
                                            ("nan", "prices.err_number")])
def test_bad_prices_are_refused_with_a_sentence(value, key):
    with pytest.raises(pricing.PriceError) as err:
        pricing.parse_price(value, None, "1")
    assert err.value.key == key


def test_repricing_past_calls_happens_only_on_request(db):
    add(db, model="qwen-max", cost=None, input_tokens=1_000_000, output_tokens=0)
    pricing.set_user_price("ana", "*", "qwen-max", pricing.Price(Decimal(2), Decimal(6)))
    assert usage.totals(usage.hourly("ana", usage.Filters(), eng=db)).priced == 0
    assert pricing.reprice("ana", "*", "qwen-max", pricing.Price(Decimal(2), Decimal(6))) == 1
    assert usage.totals(usage.hourly("ana", usage.Filters(), eng=db)).cost_usd == 2.0


def test_budget_banner_levels_and_hard_stop(db):
    assert budget.status("ana", eng=db) is None
    budget.set_budget("ana", "1", "USD", hard_stop=True, eng=db)
    add(db, cost=Decimal("0.85"))
    assert budget.status("ana", eng=db).level == "warn"
    budget.enforce("ana", eng=db)  # 85%: allowed
    add(db, cost=Decimal("0.2"))
    assert budget.status("ana", eng=db).level == "over"
    with pytest.raises(budget.BudgetExceeded):
        budget.enforce("ana", eng=db)
    budget.enforce("bo", eng=db)  # another user's spend is not ours
    with pytest.raises(pricing.PriceError):
        budget.set_budget("ana", "-5", eng=db)


def test_hard_stop_refuses_calls_when_the_database_is_unreachable(tmp_path: Path):
    path = tmp_path / "b.sqlite3"
    eng = store.engine(f"sqlite:///{path}")
    budget.set_budget("ana", "10", hard_stop=True, eng=eng)
    budget.enforce("ana", eng=eng)
    eng.dispose()
    path.unlink()
    path.mkdir()  # the database file is now a folder: nothing can be read
    with pytest.raises(budget.BudgetUnavailable):
        budget.enforce("ana", eng=eng)
    # How metering will call it, before the request goes out: the refusal is the caller's error.
    unreachable = create_engine(f"sqlite:///{tmp_path / 'none' / 'x.sqlite3'}")
    budget.enforce("bo", eng=unreachable)  # no hard stop known: the call may go on


def test_a_locked_database_waits_for_the_writer(db):
    import sqlite3
    import threading
    import time
    add(db)
    locked = threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(db.url.database)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(2)  # the fault: another process holds the write lock for 2 s
        conn.commit()
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert locked.wait(5)
    hours = usage.hourly("ana", usage.Filters(), eng=db)  # WAL readers are not blocked
    assert usage.totals(hours).calls == 1
    pricing.set_user_price("ana", "*", "m", pricing.Price(Decimal(1), Decimal(1)), eng=db)
    assert pricing.user_price("ana", "x", "m", eng=db) == pricing.Price(Decimal(1), Decimal(1))
    thread.join(10)


def test_a_call_with_no_usage_is_counted_and_estimated(db):
    add(db, input_tokens=0, output_tokens=0, cost=None, estimated=True, ttft_s=None,
        total_s=None, status="error")
    totals = usage.totals(usage.hourly("ana", usage.Filters(), eng=db))
    assert (totals.calls, totals.errors, totals.unpriced) == (1, 1, 1)
    page = usage.ledger("ana", usage.Filters(), usage.zone(None), eng=db)
    assert page["tokens_per_s"].isna().all()


def test_the_hard_stop_refuses_a_call_before_it_goes_out(db):
    budget.set_budget("ana", "1", "USD", hard_stop=True, eng=db)
    add(db, cost=Decimal("1.5"))
    with FakeOpenAIServer(api_key=API_KEY, tokens=5) as server:
        endpoint = make_endpoint("gw", "custom", base_url=server.url, api_key=API_KEY)
        call = Call(endpoint, "gpt-4o-mini", [Message("user", "hi")], user_id="ana",
                    source="compare", eng=db).run_sync(10)
        assert server.requests == []  # nothing went out
        other = Call(endpoint, "gpt-4o-mini", [Message("user", "hi")], user_id="bo",
                     eng=db).run_sync(10)
    assert call.status == "error" and call.error.kind == "budget"
    assert call.error.hint == "error.budget" and call.text == ""
    from core.i18n import t
    assert "Usage page" in t(call.error.hint, **call.error.context)
    with db.connect() as conn:
        rows = conn.execute(store.calls.select().where(store.calls.c.user_id == "ana",
                                                       store.calls.c.source == "compare")).all()
    assert [(r.status, r.error_kind, r.cost_usd) for r in rows] == [("error", "budget", 0)]
    assert other.status == "ok"  # bo has no budget


def test_the_hard_stop_refuses_a_call_when_the_database_is_unreachable(tmp_path: Path):
    path = tmp_path / "c.sqlite3"
    eng = store.engine(f"sqlite:///{path}")
    budget.set_budget("ana", "10", hard_stop=True, eng=eng)
    budget.enforce("ana", eng=eng)
    eng.dispose()
    path.unlink()
    path.mkdir()
    with FakeOpenAIServer(api_key=API_KEY, tokens=5) as server:
        endpoint = make_endpoint("gw", "custom", base_url=server.url, api_key=API_KEY)
        call = Call(endpoint, "gpt-4o-mini", [Message("user", "hi")], user_id="ana",
                    eng=eng).run_sync(10)
        assert server.requests == []
    assert call.status == "error" and call.error.hint == "error.budget_unavailable"


def test_a_blind_comparison_stays_out_of_the_ledger_until_its_vote(db):
    from core import compare
    add(db, model="seen")
    cid = compare.create("ana", blind=True, pool=[("OpenAI", "a"), ("OpenAI", "b")],
                         n_panes=2, eng=db)
    turn = compare.start_turn("ana", cid, "hi", eng=db)
    for position, model in enumerate(("a", "b")):
        add(db, model=model, source="compare", comparison_id=cid, cost=Decimal("0.5"))
        with db.connect() as conn:
            row_id = conn.execute(select(func.max(store.calls.c.id))).scalar_one()
        compare.save_answer(cid, turn, position, text="x", status="ok", call_id=row_id, eng=db)
    assert len(compare.hidden_call_ids("ana", eng=db)) == 2
    every = usage.Filters()
    tz = usage.zone(None)

    def shown() -> tuple:
        totals = usage.totals(usage.hourly("ana", every, eng=db))
        csv = usage.export_csv("ana", every, tz, eng=db).decode("utf-8-sig")
        return (set(usage.ledger("ana", every, tz, eng=db)["model"]), totals.calls,
                round(totals.cost_usd, 2), usage.count("ana", every, eng=db),
                set(usage.facets("ana", every, eng=db)["model"]),
                len(csv.strip().splitlines()) - 1)

    assert shown() == ({"seen"}, 1, 0.01, 1, {"seen"}, 1)
    compare.vote("ana", cid, turn, "tie", eng=db)
    assert shown() == ({"seen", "a", "b"}, 3, 1.01, 3, {"seen", "a", "b"}, 3)


def test_the_hourly_rollup_matches_the_log_and_follows_votes_and_repricing(db):
    from core import compare
    now = datetime.now(UTC)
    for hours_ago in (0, 1, 3, 30, 300):
        add(db, at=now - timedelta(hours=hours_ago, minutes=5), cost=Decimal("0.01"))
    add(db, at=now - timedelta(hours=5), model="m2", cost=None)
    cid = compare.create("ana", blind=True, pool=[("OpenAI", "a"), ("OpenAI", "b")],
                         n_panes=2, eng=db)
    turn = compare.start_turn("ana", cid, "hi", eng=db)
    add(db, at=now - timedelta(hours=4), model="a", comparison_id=cid, cost=Decimal("1"))
    with db.connect() as conn:
        row_id = conn.execute(select(func.max(store.calls.c.id))).scalar_one()
    compare.save_answer(cid, turn, 0, text="x", status="ok", call_id=row_id, eng=db)
    compare.save_answer(cid, turn, 1, text="", status="error", eng=db)
    every = usage.Filters()
    raw = usage._hourly_raw("ana", every, db)
    for _ in range(2):  # the first builds the rollup, the second reads it
        rolled = usage.hourly("ana", every, eng=db)
        assert usage.totals(rolled) == usage.totals(usage.hourly(
            "ana", usage.Filters(sources=("chat",)), eng=db))  # the log asked directly
        assert (usage.totals(rolled).calls, round(usage.totals(rolled).cost_usd, 2)) == (6, 0.05)
        assert len(rolled) == len(raw)
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(store.calls_hourly)).scalar() >= 4
    compare.vote("ana", cid, turn, "win", winner=0, eng=db)
    assert round(usage.totals(usage.hourly("ana", every, eng=db)).cost_usd, 2) == 1.05
    pricing.reprice("ana", "*", "m2", pricing.Price(Decimal(1), Decimal(1)))
    assert round(usage.totals(usage.hourly("ana", every, eng=db)).cost_usd, 4) == 1.0501


def test_a_rollup_that_cannot_be_written_falls_back_to_the_log(db):
    import sqlite3
    import threading
    import time
    add(db, at=datetime.now(UTC) - timedelta(hours=5), cost=Decimal("0.5"))
    locked, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(db.url.database, timeout=1)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        conn.commit()
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert locked.wait(5)
    try:
        began = time.monotonic()
        totals = usage.totals(usage.hourly("ana", usage.Filters(), eng=db))
        assert (totals.calls, totals.cost_usd) == (1, 0.5)
        assert time.monotonic() - began < 25
    finally:
        release.set()
        thread.join(10)
    assert usage.totals(usage.hourly("ana", usage.Filters(), eng=db)).calls == 1


def test_the_first_rollup_is_built_in_pieces_that_add_up_to_the_log(db, monkeypatch):
    monkeypatch.setattr(usage, "_piece_rows", 3)  # pieces of about 3 calls, not 20,000
    monkeypatch.setattr(usage, "PIECE_ROWS", (3, 3))
    now = datetime.now(UTC)
    for hours_ago in range(3, 40):
        for n in range(hours_ago % 3 + 1):
            add(db, at=now - timedelta(hours=hours_ago, minutes=n), cost=Decimal("0.01"),
                status="error" if n == 2 else "ok")
    add(db, at=now - timedelta(hours=10), model="m2", cost=None)
    holds: list[float] = []
    until = usage.roll_up("ana", eng=db, holds=holds)
    assert len(holds) >= 10  # 74 calls in pieces of about 3, each of whole hours
    assert until == usage._floor_hour(now - usage.SETTLE)
    h = store.calls_hourly.c
    with db.connect() as conn:
        rolled = conn.execute(select(func.sum(h.calls), func.sum(h.cost), func.sum(h.priced),
                                     func.sum(h.errors)).where(h.user_id == "ana")).one()
    assert tuple(rolled) == (74, Decimal("0.73"), 73, 12)
    built = len(holds)
    assert usage.roll_up("ana", eng=db, holds=holds) == until and len(holds) == built
    every = usage.Filters()
    assert usage.totals(usage.hourly("ana", every, eng=db)) == usage.totals(
        usage.hourly("ana", usage.Filters(sources=("chat",)), eng=db))  # the log asked directly
