"""Streamlit widgets the pages share. The only part of core that imports streamlit."""

from core.ui.calls import mark_interrupted_calls
from core.ui.chat import clean_prompt, send, show_history, show_message, stop_reply
from core.ui.errors import show_config_error, show_error
from core.ui.pickers import Choice, cached_models, model_picker, params_picker, store_models
from core.ui.session import (
    add_session_endpoint,
    current_user,
    endpoints,
    language_switch,
    remove_session_endpoint,
    setup_language,
)
from core.ui.stream import show_run

__all__ = [
    "Choice",
    "add_session_endpoint",
    "cached_models",
    "clean_prompt",
    "current_user",
    "endpoints",
    "language_switch",
    "mark_interrupted_calls",
    "model_picker",
    "params_picker",
    "remove_session_endpoint",
    "send",
    "setup_language",
    "show_config_error",
    "show_error",
    "show_history",
    "show_message",
    "show_run",
    "stop_reply",
    "store_models",
]
