"""Chat with the chosen model, in a saved conversation (`/?c=<id>` reopens one)."""

import streamlit as st

from core import ui
from core.i18n import t
from core.ui.usage import budget_banner

user = ui.current_user()
endpoints, problems = ui.endpoints()
cid = ui.open_conversation(user)
choice = ui.model_picker(endpoints, user, prefer=ui.preferred_model())
params = ui.params_picker()
system = ui.system_prompt()
thread = ui.load_thread(user)
ui.measure_context(user, thread, choice, params, system)
ui.conversations_sidebar(user, thread.conversation.id if thread else None)

st.title(t("chat.title"))
ui.show_notice()
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
elif thread is None or not thread.messages:
    ready.caption(t("chat.empty", model=ui.literal(choice.model),
                    endpoint=ui.literal(choice.endpoint.name)))

action = ui.pending_action() if choice is not None and thread is not None else None
ui.show_thread(thread, user, endpoints, action=action)

prompt = st.chat_input(t("chat.placeholder"), disabled=choice is None, on_submit=ui.stop_reply)
text = ui.clean_prompt(prompt)
if prompt is not None and text is None:
    st.toast(t("chat.empty_not_sent"), icon=":material/edit_off:")
elif text is not None and choice is not None:
    ready.empty()
    ui.send(text, choice, params, thread, user=user, system=system)
elif action is not None and choice is not None and thread is not None:
    ui.regenerate(action[1], choice, params, thread, user=user, system=system,
                  edited=action[2] if action[0] == "edit" else None)
else:
    ui.mark_seen(thread)
