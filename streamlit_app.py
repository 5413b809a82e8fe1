"""OwnGPT: chat with, compare and account for the models you choose."""

import streamlit as st

from core import ui
from core.i18n import t

st.set_page_config(page_title="OwnGPT", page_icon="💬", layout="wide")
ui.setup_language()

pages = [
    st.Page("pages/chat.py", title=t("nav.chat"), icon=":material/chat:", url_path="chat",
            default=True),
    st.Page("pages/settings.py", title=t("nav.settings"), icon=":material/settings:",
            url_path="settings"),
]
page = st.navigation(pages)
ui.language_switch()
page.run()
