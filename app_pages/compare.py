"""Compare two to four models on the same prompt: panes, numbers, votes, leaderboard."""

import streamlit as st

from core import compare, ui
from core.i18n import t
from core.ui import compare as cui
from core.ui.usage import budget_banner

user = ui.current_user()
endpoints, problems = ui.endpoints()
st.title(t("compare.title"))
budget_banner(user)
for problem in problems:
    ui.show_config_error(problem)

n = st.sidebar.segmented_control(t("compare.panes"), [2, 3, 4], default=2, key="cmp_n") or 2
blind = st.sidebar.toggle(t("compare.blind"), key="cmp_blind", help=t("compare.blind_help"))
per_pane = st.sidebar.toggle(t("compare.per_pane"), key="cmp_per_pane",
                             help=t("compare.per_pane_help"))
params = ui.params_picker(key="compare")
system = st.sidebar.text_area(t("chat.system"), key="cmp_system")
if st.sidebar.button(t("compare.new"), icon=":material/add:", width="stretch"):
    st.session_state.pop(cui.ID_KEY, None)
    st.session_state.pop(cui.RUN_KEY, None)
st.sidebar.subheader(t("compare.history"))
cui.show_history(user)

with st.expander(t("compare.leaderboard"), icon=":material/leaderboard:"):
    cui.show_leaderboard(user)

comp = cui.current(user)
panes, pool = [], []
if not endpoints:
    st.info(t("connect.none"), icon=":material/power_off:")
elif comp is None and blind:
    pool = cui.pool_picker(endpoints)
elif comp is None:
    panes = cui.pane_pickers(endpoints, n, per_pane=per_pane)
    cui.ollama_note(panes)
    if per_pane:
        st.caption(t("compare.per_pane_note"))

if comp is not None:
    cui.show_comparison(user, comp)

prompt = st.chat_input(t("compare.placeholder"), disabled=not endpoints)
if prompt is not None:
    try:
        if comp is None:
            settings = {k: v for k, v in vars(params).items() if v is not None}
            if blind:
                cid = compare.create(user, blind=True, pool=pool, n_panes=n,
                                     system_prompt=system, params=settings)
            elif any(p is None for p in panes):
                raise compare.CompareError("choose_models")
            else:
                cid = compare.create(user, [compare.Pane(e.name, m, sp, pp)
                                            for e, m, sp, pp in panes],
                                     system_prompt=system, params=settings, per_pane=per_pane)
            st.session_state[cui.ID_KEY] = cid
        else:
            cid = comp.id
        cui.start(user, cid, prompt, endpoints)
        st.rerun()
    except compare.CompareError as err:
        st.warning(t(f"compare.refused.{err.reason}"), icon=":material/block:")
