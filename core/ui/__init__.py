"""Streamlit widgets the pages share. The only part of core that imports streamlit."""

from core.chat import clean_prompt
from core.ui.calls import mark_interrupted_calls
from core.ui.chat import (
    load_thread,
    mark_seen,
    measure_context,
    open_conversation,
    pending_action,
    preferred_model,
    regenerate,
    send,
    show_notice,
    show_thread,
    stop_reply,
)
from core.ui.conversations import sidebar as conversations_sidebar
from core.ui.errors import show_config_error, show_error
from core.ui.gate import (
    account,
    admin_sign_in,
    allowed,
    gate,
    require,
    return_to_address,
    role,
)
from core.ui.pickers import (
    Choice,
    cached_models,
    model_picker,
    params_picker,
    store_models,
    system_prompt,
)
from core.ui.render import literal
from core.ui.render import show as show_markdown
from core.ui.session import (
    add_session_endpoint,
    current_user,
    endpoints,
    language_switch,
    remove_session_endpoint,
    setup_language,
)
from core.ui.storage import database_banner
from core.ui.stream import show_run

__all__ = [
    "Choice",
    "account",
    "admin_sign_in",
    "allowed",
    "gate",
    "require",
    "return_to_address",
    "role",
    "add_session_endpoint",
    "cached_models",
    "clean_prompt",
    "conversations_sidebar",
    "load_thread",
    "mark_seen",
    "measure_context",
    "open_conversation",
    "pending_action",
    "preferred_model",
    "regenerate",
    "show_notice",
    "show_thread",
    "current_user",
    "database_banner",
    "endpoints",
    "language_switch",
    "literal",
    "mark_interrupted_calls",
    "model_picker",
    "params_picker",
    "remove_session_endpoint",
    "send",
    "setup_language",
    "system_prompt",
    "show_config_error",
    "show_error",
    "show_markdown",
    "show_run",
    "stop_reply",
    "store_models",
]
