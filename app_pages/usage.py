"""The call log: filters, totals, charts, the ledger, exports, and the budget."""

import streamlit as st

from core import budget, metering, ui, usage
from core.i18n import t
from core.ui import usage as usage_ui

user = ui.current_user()
tz = usage.zone(st.context.timezone)
st.title(t("usage.title"))
# Calls of a process that died mid-answer show as interrupted, not running (one UPDATE).
metering.mark_interrupted()

if not usage.has_calls(user):
    st.info(t("usage.empty"), icon=":material/receipt_long:")
    st.stop()

chosen, hours = usage_ui.filters(user, st.context.timezone)
totals = usage.totals(hours)
m = st.columns(5)
m[0].metric(t("usage.calls"), f"{totals.calls:,}")
m[1].metric(t("usage.tokens_in"), f"{totals.input:,}", help=t("usage.cached_n",
                                                              n=f"{totals.cached:,}"))
m[2].metric(t("usage.tokens_out"), f"{totals.output:,}")
m[3].metric(t("usage.cost"), usage_ui.money(totals.cost_usd), help=f"${totals.cost_usd:,.6f}")
m[4].metric(t("usage.error_rate"), f"{totals.error_rate:.1%}")
st.caption(t("usage.cost_of", n=f"{totals.priced:,}", m=f"{totals.unpriced:,}"))

ledger_tab, charts_tab, prices_tab, budget_tab = st.tabs(
    [t("usage.ledger"), t("usage.charts"), t("usage.prices"), t("usage.budget")])
with ledger_tab:
    left, mid, right = st.columns(3)
    sort = left.selectbox(t("usage.sort"), list(usage.SORTABLE), key="usage_sort")
    size = mid.selectbox(t("usage.page_size"), usage.PAGE_SIZES, index=1, key="usage_size")
    pages = max(1, -(-totals.calls // size))
    page = right.number_input(t("usage.page", n=pages), 1, pages, 1, key="usage_page")
    st.dataframe(usage.ledger(user, chosen, tz, sort=sort, page=int(page), page_size=size),
                 column_config=usage_ui.ledger_config(), column_order=usage_ui.LEDGER_ORDER,
                 hide_index=True, width="stretch")
    if totals.calls > usage.EXPORT_LIMIT:
        st.warning(t("usage.export_too_big", n=f"{totals.calls:,}",
                     limit=f"{usage.EXPORT_LIMIT:,}"), icon=":material/filter_alt:")
    else:
        a, b, _ = st.columns([1, 1, 3])
        # No rerun on click: a rerun re-registers the deferred file while the browser
        # fetches it, and under load the download was lost.
        a.download_button(t("usage.csv"), lambda: usage.export_csv(user, chosen, tz),
                          "owngpt-usage.csv", "text/csv", key="usage_csv", on_click="ignore")
        b.download_button(t("usage.parquet"), lambda: usage.export_parquet(user, chosen, tz),
                          "owngpt-usage.parquet", key="usage_parquet", on_click="ignore")
with charts_tab:
    st.altair_chart(usage_ui.cost_chart(usage.daily(hours, tz)), width="stretch")
    if not totals.by_model.empty:
        st.altair_chart(usage_ui.tokens_chart(totals.by_model), width="stretch")
    st.dataframe(usage.speed(user, chosen), hide_index=True, width="stretch")
    st.dataframe(usage.dearest(user, chosen, tz), column_config=usage_ui.ledger_config(),
                 hide_index=True, width="stretch")
with prices_tab:
    seen = usage.with_urls(user, usage.facets_of(hours))
    if ui.allowed("edit_prices"):
        usage_ui.prices(user, seen, {e.name: e for e in ui.endpoints()[0]})
    else:
        st.info(t("gate.prices_admin"), icon=":material/admin_panel_settings:")
with budget_tab:
    usage_ui.budget_banner(user)
    known = budget.get_budget(user)
    with st.form("usage_budget"):
        amount = st.text_input(t("usage.budget_amount"),
                               value="" if known is None else str(known.amount))
        currency = st.selectbox(t("usage.currency"), ["USD", "CNY"])
        hard = st.checkbox(t("usage.hard_stop"), value=bool(known and known.hard_stop))
        if st.form_submit_button(t("usage.save"), disabled=not ui.allowed("edit_budget"),
                                 help=None if ui.allowed("edit_budget") else t("gate.admin_only")):
            ui.require("edit_budget")
            try:
                budget.set_budget(user, amount, currency, hard)
            except ValueError as err:
                st.error(t(getattr(err, "key", "usage.bad_amount"),
                           **getattr(err, "context", {})))
