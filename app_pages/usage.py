"""The call log: filters, totals, charts, the ledger, exports, prices and the budget."""

import streamlit as st

from core import metering, money, ui, usage
from core.i18n import t
from core.ui import usage as usage_ui

user = ui.current_user()
tz = usage.zone(st.context.timezone)
endpoints = ui.endpoints()[0]
st.title(t("usage.title"))
# Calls of a process that died mid-answer show as interrupted, priced, not running.
metering.mark_interrupted(endpoints=endpoints)
view = usage_ui.currency_choice(user)

logged = usage.has_calls(user)
if logged:
    chosen, hours = usage_ui.filters(user, st.context.timezone)
    totals = usage.totals(hours)
    m = st.columns(5)
    m[0].metric(t("usage.calls"), f"{totals.calls:,}")
    m[1].metric(t("usage.tokens_in"), f"{totals.input:,}",
                help=t("usage.cached_n", n=f"{totals.cached:,}"))
    m[2].metric(t("usage.tokens_out"), f"{totals.output:,}")
    m[3].metric(t("usage.cost"), money.cost(totals.cost_usd, view, partial=bool(totals.unpriced)),
                help=t("usage.cost_exact", usd=f"${totals.cost_usd:,.8f}"))
    m[4].metric(t("usage.error_rate"), f"{totals.error_rate:.1%}")
    st.caption(t("usage.cost_of", n=f"{totals.priced:,}", m=f"{totals.unpriced:,}"))
else:
    # The Budget and Prices tabs are there before the first call: a limit can be set first.
    st.info(t("usage.empty"), icon=":material/receipt_long:")

if logged:
    ledger_tab, charts_tab, prices_tab, budget_tab = st.tabs(
        [t("usage.ledger"), t("usage.charts"), t("usage.prices"), t("usage.budget")])
else:
    prices_tab, budget_tab = st.tabs([t("usage.prices"), t("usage.budget")])
if logged:
    with ledger_tab:
        left, mid, right = st.columns(3)
        sort = left.selectbox(t("usage.sort"), list(usage.SORTABLE), key="usage_sort")
        size = mid.selectbox(t("usage.page_size"), usage.PAGE_SIZES, index=1, key="usage_size")
        pages = max(1, -(-totals.calls // size))
        page = right.number_input(t("usage.page", n=pages), 1, pages, 1, key="usage_page")
        rows = usage.ledger(user, chosen, tz, sort=sort, page=int(page), page_size=size)
        st.dataframe(usage_ui.with_cost(rows, view), column_config=usage_ui.ledger_config(),
                     column_order=usage_ui.LEDGER_ORDER, hide_index=True, width="stretch")
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
        st.altair_chart(usage_ui.cost_chart(usage.daily(hours, tz), view), width="stretch")
        if not totals.by_model.empty:
            st.altair_chart(usage_ui.tokens_chart(totals.by_model), width="stretch")
        st.dataframe(usage.speed(user, chosen), hide_index=True, width="stretch")
        st.dataframe(usage_ui.with_cost(usage.dearest(user, chosen, tz), view),
                     column_config=usage_ui.ledger_config(),
                     column_order=usage_ui.LEDGER_ORDER, hide_index=True, width="stretch")
with prices_tab:
    if ui.allowed("edit_prices"):
        usage_ui.prices(usage.with_urls(user, usage.facets_of(hours)) if logged else None,
                        endpoints)
    else:
        st.info(t("gate.prices_admin"), icon=":material/admin_panel_settings:")
with budget_tab:
    usage_ui.budget_form(user)
