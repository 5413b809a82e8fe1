"""Widgets of the usage page and the budget banner for chat and compare."""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import urlparse

import altair as alt
import pandas as pd
import streamlit as st

from core import budget, money, pricing, usage
from core.config import Endpoint
from core.i18n import t
from core.ui.gate import allowed, require
from core.ui.render import literal, markdown

# Keys written out whole, so the catalog check (tests/test_i18n.py) finds each one.
PRESET_KEYS = {"today": "usage.preset_today", "7d": "usage.preset_7d",
               "month": "usage.preset_month", "30d": "usage.preset_30d",
               "all": "usage.preset_all", "custom": "usage.preset_custom"}
SOURCE_KEYS = {"yours": "usage.src_yours", "catalog": "usage.src_catalog",
               "vendor": "usage.src_vendor", "free": "usage.src_free", "none": "usage.src_none"}
BANNER_KEYS = {(True, "warn"): "budget.warn", (True, "over"): "budget.over",
               (False, "warn"): "budget.cap_warn", (False, "over"): "budget.cap_over"}


def budget_banner(user_id: str) -> None:
    """A warning at 80% of a monthly budget (the deployment's or the person's own cap), an
    error at 100%, and how many of the month's calls have no price (nothing without a
    budget)."""
    try:
        found = budget.statuses(user_id)
    except Exception:  # noqa: BLE001 - a banner must never break the chat page
        return
    if not found:
        return
    worst = max(found, key=lambda s: s.fraction)
    if worst.level is not None:
        b = worst.budget
        args = {"spent": money.amount(worst.spent, b.currency),
                "amount": money.amount(b.amount, b.currency),
                "pct": f"{worst.fraction * 100:.0f}"}
        key = BANNER_KEYS[(b.user_id == budget.DEPLOYMENT, worst.level)]
        if b.amount == 0:
            key = "budget.zero"
        if worst.level == "over":
            st.error(t(key, **args), icon=":material/block:")
        else:
            st.warning(t(key, **args), icon=":material/warning:")
    unpriced = max(s.unpriced for s in found)
    if unpriced:
        st.warning(t("budget.unpriced", n=unpriced), icon=":material/money_off:")


def filters(user_id: str, tz_name: str | None) -> tuple[usage.Filters, pd.DataFrame]:
    """The filter row and the hourly buckets it keeps; a bad date range is reported and falls
    back to all time."""
    tz = usage.zone(tz_name)
    cols = st.columns([1, 1, 1, 1, 1])
    preset = cols[0].selectbox(t("usage.range"), usage.PRESETS, index=3,
                               format_func=lambda p: t(PRESET_KEYS[p]), key="usage_preset")
    custom = None
    if preset == "custom":
        picked = cols[0].date_input(t("usage.dates"), value=(date.today(), date.today()),
                                    key="usage_dates")
        if isinstance(picked, tuple) and len(picked) == 2:
            custom = picked
    try:
        start, end = usage.date_range(preset, tz, custom=custom)
    except usage.UsageError as err:
        st.error(t(err.key, **err.context), icon=":material/event_busy:")
        start, end = None, None
    ranged = usage.hourly(user_id, usage.Filters(start, end))  # one read serves the lists too
    facets = usage.facets_of(ranged)
    endpoints = cols[1].multiselect(t("usage.endpoint"), sorted(set(facets["endpoint"])),
                                    key="usage_endpoints")
    models = cols[2].multiselect(t("usage.model"), sorted(set(facets["model"])),
                                 key="usage_models")
    sources = cols[3].multiselect(t("usage.source"), list(usage.store.SOURCES),
                                  key="usage_sources")
    statuses = cols[4].multiselect(t("usage.status"), list(usage.store.STATUSES),
                                   key="usage_statuses")
    chosen = usage.Filters(start, end, tuple(endpoints), tuple(models), tuple(sources),
                           tuple(statuses))
    return chosen, usage.narrowed(user_id, chosen, ranged)


# What a user reads first (when, which model, how many tokens, what it cost), then the rest.
LEDGER_ORDER = ("started_at", "model", "input_tokens", "cached_input_tokens", "output_tokens",
                "cost", "status", "ttft_s", "total_s", "tokens_per_s", "error_kind",
                "reasoning_tokens", "estimated", "endpoint", "provider", "source",
                "server_model", "conversation_id", "comparison_id", "id")


def ledger_config() -> dict:
    """Column types and formats of the ledger table."""
    cc = st.column_config
    return {
        "started_at": cc.DatetimeColumn(t("usage.col_time"), format="YYYY-MM-DD HH:mm:ss"),
        "cost": cc.TextColumn(t("usage.col_cost")),
        "ttft_s": cc.NumberColumn(t("usage.col_ttft"), format="%.2f s"),
        "total_s": cc.NumberColumn(t("usage.col_total"), format="%.2f s"),
        "tokens_per_s": cc.NumberColumn(t("usage.col_tps"), format="%.1f"),
        "input_tokens": cc.NumberColumn(t("usage.col_input"), format="%d"),
        "cached_input_tokens": cc.NumberColumn(t("usage.col_cached"), format="%d"),
        "output_tokens": cc.NumberColumn(t("usage.col_output"), format="%d"),
        "estimated": cc.CheckboxColumn(t("usage.col_estimated")),
        "model": cc.TextColumn(t("usage.model")),
        "status": cc.TextColumn(t("usage.status")),
        "error_kind": cc.TextColumn(t("usage.col_error")),
        "reasoning_tokens": cc.NumberColumn(t("usage.col_reasoning"), format="%d"),
        "endpoint": cc.TextColumn(t("usage.endpoint")),
        "source": cc.TextColumn(t("usage.source")),
    }


def with_cost(frame: pd.DataFrame, view: money.View) -> pd.DataFrame:
    """Ledger rows with their cost as the viewer reads it (the dollars stay in cost_usd)."""
    return frame.assign(cost=[money.cost(None if pd.isna(v) else v, view)
                              for v in frame["cost_usd"]])


def cost_chart(days: pd.DataFrame, view: money.View) -> alt.Chart:
    """Cost per day, stacked by model, in the viewer's currency."""
    shown = days.assign(cost=[float(view.from_usd(v)) for v in days["cost"]])
    return alt.Chart(shown).mark_bar().encode(
        x=alt.X("day:T", title=None), y=alt.Y("sum(cost):Q", title=view.currency),
        color=alt.Color("model:N"), tooltip=["day:T", "model:N", "cost:Q", "calls:Q"])


def tokens_chart(by_model: pd.DataFrame) -> alt.Chart:
    """Input and output tokens by model."""
    long = by_model.melt(id_vars="model", value_vars=["input", "output"], var_name="kind",
                         value_name="tokens")
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", title=None), x=alt.X("tokens:Q"), color="kind:N",
        tooltip=["model:N", "kind:N", "tokens:Q"])


def _source(row: Any) -> str:
    if row.source == "vendor" and row.vendor is not None:
        return t("usage.src_vendor", page=urlparse(row.vendor.source).hostname or "",
                 read=row.vendor.read)
    return t(SOURCE_KEYS[row.source])


def price_error(err: pricing.PriceError) -> str:
    """A refused price or budget as one sentence, naming its row where it has one."""
    sentence = t(err.key, **err.context)
    row = err.context.get("row")
    return t("prices.in_row", row=row, sentence=sentence) if row else sentence


def prices(seen: pd.DataFrame | None, configured: list[Any]) -> None:
    """The deployment's prices in force for the models seen and configured, editable in
    numeric cells; the rate in a numeric input; re-pricing only on its own button."""
    saved = st.session_state.pop("usage_prices_saved", None)
    if saved is not None:
        st.success(t("usage.prices_saved", n=saved), icon=":material/check:")
    table = usage.prices_in_force(usage.priced_models(seen, configured),
                                  {e.name: e for e in configured})
    if table.empty:
        st.info(t("usage.prices_none_seen"), icon=":material/sell:")
        return
    unpriced = table[table["source"] == "none"]
    if not unpriced.empty:
        st.warning(t("usage.prices_unpriced", models=", ".join(map(literal, unpriced["model"]))),
                   icon=":material/money_off:")
    cc = st.column_config
    shown = table.assign(source=[_source(r) for r in table.itertuples()]).drop(columns="vendor")
    price = {"min_value": 0.0, "max_value": float(pricing.MAX_PRICE_PER_MTOK),
             "format": "plain"}  # every digit typed is shown: what is saved is what is shown
    with st.form("usage_prices"):
        st.caption(t("usage.prices_help"))
        edited = st.data_editor(
            shown, key="usage_prices_editor", hide_index=True, width="stretch",
            disabled=["endpoint", "model", "source"],
            column_config={
                "endpoint": cc.TextColumn(t("usage.endpoint")),
                "model": cc.TextColumn(t("usage.model")),
                "input": cc.NumberColumn(t("usage.price_input"), **price),
                "cached_input": cc.NumberColumn(t("usage.price_cached"), **price),
                "output": cc.NumberColumn(t("usage.price_output"), **price),
                "currency": cc.SelectboxColumn(t("usage.currency"),
                                               options=list(pricing.CURRENCIES), required=True),
                "source": cc.TextColumn(t("usage.price_source")),
            })
        rate = st.number_input(t("usage.rate"), min_value=0.0,
                               value=float(pricing.cny_per_usd()), step=0.1, format="%g",
                               key="usage_rate")
        save = st.form_submit_button(t("usage.prices_save"), key="usage_prices_save")
    if save:
        require("edit_prices")
        try:
            changes = usage.changed_prices(shown, edited)
            new_rate = pricing.parse_amount(rate, field=t("usage.rate"))
            if new_rate is None or new_rate == 0:
                raise pricing.PriceError("prices.err_rate")
        except pricing.PriceError as err:
            st.error(markdown(price_error(err) + " " + t("usage.prices_not_saved")),
                     icon=":material/error:")
            return
        if new_rate != pricing.cny_per_usd():
            pricing.set_cny_per_usd(new_rate)
        for endpoint, model, new in changes:
            pricing.set_price(endpoint, model, new)
        st.session_state.pop("usage_prices_editor", None)
        # Drawn again at once so the table, its sources and the re-price button are current.
        st.session_state["usage_prices_saved"] = len(changes)
        st.rerun()
    yours = table[table["source"] == "yours"]
    if not yours.empty and st.button(t("usage.reprice", n=len(yours)), key="usage_reprice",
                                     help=t("usage.reprice_help")):
        require("edit_prices")
        changed = 0
        for row in yours.itertuples():
            own = pricing.own_price(row.endpoint, row.model)
            if own is not None:
                changed += pricing.reprice(row.endpoint, row.model, own)
        st.session_state["usage_repriced"] = changed
        st.rerun()  # the totals above are drawn again with the new costs
    repriced = st.session_state.pop("usage_repriced", None)
    if repriced is not None:
        st.success(t("usage.repriced", n=f"{repriced:,}"), icon=":material/check:")


def budget_form(user_id: str) -> None:
    """The deployment's monthly budget: its amount in a numeric input, the currency it was
    saved in, the hard stop; a save confirms, and the banner above shows it at once."""
    saved = st.session_state.pop("usage_budget_saved", None)
    budget_banner(user_id)
    if saved is not None:
        st.success(saved, icon=":material/check:")
    known = budget.get_budget()
    with st.form("usage_budget"):
        amount = st.number_input(
            t("usage.budget_amount"), min_value=0.0,
            value=None if known is None else float(known.amount), step=1.0, format="%g",
            help=t("usage.budget_help", limit=f"{budget.MAX_BUDGET:,}"), key="usage_budget_amount")
        currency = st.selectbox(
            t("usage.currency"), list(pricing.CURRENCIES),
            index=pricing.CURRENCIES.index(known.currency) if known else 0,
            key="usage_budget_currency")
        hard = st.checkbox(t("usage.hard_stop"), value=bool(known and known.hard_stop),
                           help=t("usage.hard_stop_help"), key="usage_budget_hard")
        admin = allowed("edit_budget")
        save = st.form_submit_button(t("usage.save"), key="usage_budget_save",
                                     disabled=not admin,
                                     help=None if admin else t("gate.admin_only"))
    if not save:
        return
    require("edit_budget")
    try:
        kept = budget.set_budget(budget.DEPLOYMENT, amount, currency, hard)
    except pricing.PriceError as err:
        st.error(price_error(err) + " " + t("usage.prices_not_saved"), icon=":material/error:")
        return
    money.forget()  # a viewer without a currency of their own sees the budget's
    for key in ("usage_budget_amount", "usage_budget_currency", "usage_budget_hard"):
        st.session_state.pop(key, None)  # drawn again from what was saved
    st.session_state["usage_budget_saved"] = (
        t("usage.budget_cleared") if kept is None else t(
            "usage.budget_saved_hard" if kept.hard_stop else "usage.budget_saved",
            amount=money.amount(kept.amount, kept.currency)))
    st.rerun()


def currency_choice(user_id: str) -> money.View:
    """The viewer's currency for the amounts on this page (kept for them), and its view."""
    view = money.view(user_id)
    picked = st.segmented_control(t("usage.show_in"), list(pricing.CURRENCIES),
                                  default=view.currency, key="usage_show_in")
    if picked and picked != view.currency:
        money.set_currency(user_id, picked)
        view = money.view(user_id)
    return view


PRICING_KEYS = {"auto": "settings.pricing_auto", "free": "settings.pricing_free",
                "priced": "settings.pricing_priced", "catalog": "settings.pricing_catalog",
                "own": "settings.pricing_own"}


def pricing_control(endpoint: Endpoint) -> None:
    """How an endpoint's calls are priced (free, priced, or automatic), kept for the
    deployment; an endpoint from secrets shows the setting written there."""
    mode = pricing.pricing_mode(endpoint)
    key = f"pricing_{endpoint.name}"
    if endpoint.source == "secrets":
        st.selectbox(t("settings.pricing"), [mode], format_func=lambda m: t(PRICING_KEYS[m]),
                     disabled=True, key=key, help=t("settings.pricing_secrets"))
        return
    picked = st.selectbox(t("settings.pricing"), list(pricing.SETTINGS_MODES),
                          index=pricing.SETTINGS_MODES.index(mode)
                          if mode in pricing.SETTINGS_MODES else 0,
                          format_func=lambda m: t(PRICING_KEYS[m]), key=key,
                          help=t("settings.pricing_help"))
    if picked != mode:
        require("edit_prices")
        pricing.set_pricing_mode(endpoint, picked)
        st.success(t("settings.pricing_saved", name=endpoint.name,
                     mode=t(PRICING_KEYS[picked])), icon=":material/check:")
