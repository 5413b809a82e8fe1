"""Widgets of the usage page and the budget banner for chat and compare."""

from __future__ import annotations

from datetime import date

import altair as alt
import pandas as pd
import streamlit as st

from core import budget, pricing, usage
from core.i18n import t
from core.ui.gate import require

# Keys written out whole, so the catalog check (tests/test_i18n.py) finds each one.
PRESET_KEYS = {"today": "usage.preset_today", "7d": "usage.preset_7d",
               "month": "usage.preset_month", "30d": "usage.preset_30d",
               "all": "usage.preset_all", "custom": "usage.preset_custom"}
SOURCE_KEYS = {"yours": "usage.src_yours", "catalog": "usage.src_catalog",
               "free": "usage.src_free", "none": "usage.src_none"}


def budget_banner(user_id: str) -> None:
    """A warning at 80% of the monthly budget, an error at 100% (nothing without a budget)."""
    try:
        found = budget.status(user_id)
    except Exception:  # noqa: BLE001 - a banner must never break the chat page
        return
    if found is None or found.level is None:
        return
    args = {"spent": f"{found.spent:,.2f}", "amount": f"{found.budget.amount:,.2f}",
            "currency": found.budget.currency, "pct": f"{found.fraction * 100:.0f}"}
    if found.level == "over":
        st.error(t("budget.over", **args), icon=":material/block:")
    else:
        st.warning(t("budget.warn", **args), icon=":material/warning:")


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
                "cost_usd", "status", "ttft_s", "total_s", "tokens_per_s", "error_kind",
                "reasoning_tokens", "estimated", "endpoint", "provider", "source",
                "server_model", "conversation_id", "comparison_id", "id")


def ledger_config() -> dict:
    """Column types and formats of the ledger table."""
    cc = st.column_config
    return {
        "started_at": cc.DatetimeColumn(t("usage.col_time"), format="YYYY-MM-DD HH:mm:ss"),
        "cost_usd": cc.NumberColumn(t("usage.col_cost"), format="$%.6f"),
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


def cost_chart(days: pd.DataFrame) -> alt.Chart:
    """Cost per day, stacked by model."""
    return alt.Chart(days).mark_bar().encode(
        x=alt.X("day:T", title=None), y=alt.Y("sum(cost):Q", title="USD"),
        color=alt.Color("model:N"), tooltip=["day:T", "model:N", "cost:Q", "calls:Q"])


def tokens_chart(by_model: pd.DataFrame) -> alt.Chart:
    """Input and output tokens by model."""
    long = by_model.melt(id_vars="model", value_vars=["input", "output"], var_name="kind",
                         value_name="tokens")
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", title=None), x=alt.X("tokens:Q"), color="kind:N",
        tooltip=["model:N", "kind:N", "tokens:Q"])


def prices(user_id: str, seen: pd.DataFrame, configured: dict) -> None:
    """The prices in force for the models seen, editable; re-pricing only on its own button."""
    saved = st.session_state.pop("usage_prices_saved", None)
    if saved is not None:
        st.success(t("usage.prices_saved", n=saved), icon=":material/check:")
    table = usage.prices_in_force(user_id, seen, configured)
    if table.empty:
        st.info(t("usage.prices_none_seen"), icon=":material/sell:")
        return
    unpriced = table[table["source"] == "none"]
    if not unpriced.empty:
        st.warning(t("usage.prices_unpriced", models=", ".join(unpriced["model"])),
                   icon=":material/money_off:")
    cc = st.column_config
    shown = table.assign(source=table["source"].map(lambda s: t(SOURCE_KEYS[s])))
    with st.form("usage_prices"):
        st.caption(t("usage.prices_help"))
        edited = st.data_editor(
            shown, key="usage_prices_editor", hide_index=True, width="stretch",
            disabled=["endpoint", "model", "source"],
            column_config={
                "endpoint": cc.TextColumn(t("usage.endpoint")),
                "model": cc.TextColumn(t("usage.model")),
                "input": cc.TextColumn(t("usage.price_input")),
                "cached_input": cc.TextColumn(t("usage.price_cached")),
                "output": cc.TextColumn(t("usage.price_output")),
                "currency": cc.SelectboxColumn(t("usage.currency"),
                                               options=list(pricing.CURRENCIES), required=True),
                "source": cc.TextColumn(t("usage.price_source")),
            })
        rate = st.text_input(t("usage.rate"), value=f"{pricing.cny_per_usd(user_id):f}",
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
            st.error(t(err.key, **err.context) + " " + t("usage.prices_not_saved"),
                     icon=":material/error:")
            return
        if new_rate != pricing.cny_per_usd(user_id):
            pricing.set_cny_per_usd(user_id, new_rate)
        for endpoint, model, price in changes:
            pricing.set_user_price(user_id, endpoint, model, price)
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
            price = pricing.user_price(user_id, row.endpoint, row.model)
            if price is not None:
                changed += pricing.reprice(user_id, row.endpoint, row.model, price)
        st.session_state["usage_repriced"] = changed
        st.rerun()  # the totals above are drawn again with the new costs
    repriced = st.session_state.pop("usage_repriced", None)
    if repriced is not None:
        st.success(t("usage.repriced", n=f"{repriced:,}"), icon=":material/check:")


def money(usd: float) -> str:
    """A total in dollars that fits its metric (the exact figure goes in its help)."""
    return f"${usd:,.2f}" if usd >= 100 else f"${usd:,.4f}"
