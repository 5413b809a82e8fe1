"""Chat with the chosen model."""

import streamlit as st

from core import ui
from core.i18n import t
from core.ui.usage import budget_banner

user = ui.current_user()
endpoints, problems = ui.endpoints()
choice = ui.model_picker(endpoints, user)
params = ui.params_picker()
system = ui.system_prompt()
if st.sidebar.button(t("chat.new"), icon=":material/add_comment:", width="stretch"):
    st.session_state.history = []

history: list = st.session_state.setdefault("history", [])

st.title(t("chat.title"))
budget_banner(user)
for problem in problems:
    ui.show_config_error(problem)
ready = st.empty()  # the "Ready" note goes as soon as a message is sent
if not endpoints:
    st.info(t("connect.none"), icon=":material/power_off:")
    st.page_link("app_pages/settings.py", label=t("connect.go_settings"),
                 icon=":material/settings:")
elif choice is None:
    st.info(t("chat.choose_model"), icon=":material/arrow_back:")
elif not history:
    ready.caption(t("chat.empty", model=choice.model, endpoint=choice.endpoint.name))

ui.show_history(history)

prompt = st.chat_input(t("chat.placeholder"), disabled=choice is None, on_submit=ui.stop_reply)
text = ui.clean_prompt(prompt) if prompt is not None else ui.pending_retry()
if prompt is not None and text is None:
    st.toast(t("chat.empty_not_sent"), icon=":material/edit_off:")
elif text is not None and choice is not None:
    ready.empty()
    ui.send(text, choice, params, history, user=user, system=system)
