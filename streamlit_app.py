"""OwnGPT: chat with, compare and account for the models you choose.

Page scripts live in app_pages/, not pages/: Streamlit still serves a pages/ folder as
old-style pages, so a first visit straight to /settings would skip this entry script, and
with it the gate below. `streamlit run app.py` serves this same script with the routes that
let a signed-in browser be remembered.
"""

import streamlit as st

from core import ui
from core.i18n import t

st.set_page_config(page_title="OwnGPT", page_icon="💬", layout="wide")
ui.setup_language()
# THE gate, before anything else is drawn or any page runs: on a deployment with a password
# the run ends here at the password box until this session has signed in.
viewer = ui.gate()
ui.database_banner()
ui.mark_interrupted_calls()  # once per process: calls a killed process left running

# The default page is served at / only; it reserves a pathname all the same, so it gets one
# nobody types, and /chat is a hidden page that switches to it.
chat = st.Page("app_pages/chat.py", title=t("nav.chat"), icon=":material/chat:", default=True,
               url_path="home")


def chat_alias() -> None:
    """Open the chat page from its bookmarkable address, /chat."""
    st.switch_page(chat)


pages = [
    chat,
    st.Page("app_pages/compare.py", title=t("nav.compare"), icon=":material/compare:",
            url_path="compare"),
    st.Page("app_pages/usage.py", title=t("nav.usage"), icon=":material/receipt_long:",
            url_path="usage"),
    st.Page("app_pages/settings.py", title=t("nav.settings"), icon=":material/settings:",
            url_path="settings"),
    st.Page(chat_alias, title=t("nav.chat"), url_path="chat", visibility="hidden"),
]
page = st.navigation(pages)
ui.return_to_address(pages, page)
ui.language_switch()
ui.account(viewer)
page.run()
