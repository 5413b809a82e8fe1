"""Choosing where to send a prompt: endpoint and model, remembered per user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from core import store
from core.config import Endpoint, default_model_for
from core.i18n import t
from core.providers import Params, ProviderError, provider_for
from core.providers.base import PARAM_RANGES
from core.ui.errors import show_error

LAST_MODEL = "last_model"


@dataclass(frozen=True)
class Choice:
    """An endpoint and one of its models."""

    endpoint: Endpoint
    model: str


def cached_models(endpoint: Endpoint, *, refresh: bool = False) -> list[str]:
    """The endpoint's models, asked once per session (the list rarely changes mid-chat)."""
    cache: dict[Endpoint, list[str] | ProviderError] = st.session_state.setdefault(
        "_models", {}
    )
    if refresh or endpoint not in cache:
        try:
            cache[endpoint] = provider_for(endpoint).models()
        except ProviderError as err:
            cache[endpoint] = err
    found = cache[endpoint]
    if isinstance(found, ProviderError):
        raise found
    return found


def store_models(endpoint: Endpoint, models: list[str]) -> None:
    """Keep a list of models the server just gave (a connection test) for the pickers."""
    st.session_state.setdefault("_models", {})[endpoint] = list(models)


def model_picker(endpoints: list[Endpoint], user: str, *, key: str = "chat",
                 prefer: dict[str, str] | None = None) -> Choice | None:
    """Endpoint and model selectors in the sidebar; None until both are chosen.

    Which model is chosen before the user picks one: the only model available, counting only
    endpoints that answered (an Ollama that is down does not make the choice ambiguous);
    else `prefer` (the open conversation's endpoint and model), else the model the user last
    sent a message to; else the endpoint's `default_model`;
    else the first of its preset's defaults that the server offers.
    """
    sidebar = st.sidebar
    if not endpoints:
        return None
    last = prefer if prefer and prefer.get("endpoint") else _last_model(user)
    answered = _answered(endpoints)
    only = _only_model(answered)
    names = [e.name for e in endpoints]
    if only is not None:
        start = names.index(only.endpoint.name)
    elif last.get("endpoint") in names:
        start = names.index(last["endpoint"])
    else:  # the first endpoint that answered, not one that is down
        start = next((i for i, e in enumerate(endpoints) if e in answered), 0)
    name = sidebar.selectbox(t("picker.endpoint"), names, index=start, key=f"{key}_endpoint")
    endpoint = endpoints[names.index(name)]

    refresh = sidebar.button(t("picker.refresh"), key=f"{key}_refresh", type="tertiary",
                             icon=":material/refresh:")
    try:
        models = cached_models(endpoint, refresh=refresh)
    except ProviderError as err:
        show_error(err, sidebar)
        models = []
    if (prefer and prefer.get("endpoint") == endpoint.name and prefer.get("model")
            and prefer["model"] not in models):
        models = [prefer["model"], *models]  # a conversation's model the server does not list
    options, index = _preselect(endpoint, models, last, only)
    model = sidebar.selectbox(
        t("picker.model"),
        options,
        index=index,
        key=f"{key}_model_{endpoint.name}",
        placeholder=t("picker.model_placeholder"),
        accept_new_options=True,  # a deployment or model the server does not list
        help=t("picker.model_help"),
    )
    return Choice(endpoint, model.strip()) if model and model.strip() else None


def _answered(endpoints: list[Endpoint]) -> dict[Endpoint, list[str]]:
    """The models of every endpoint that answered (each asked once per session)."""
    found: dict[Endpoint, list[str]] = {}
    for endpoint in endpoints:
        try:
            found[endpoint] = cached_models(endpoint)
        except ProviderError:
            continue
    return found


def _only_model(answered: dict[Endpoint, list[str]]) -> Choice | None:
    pairs = [Choice(e, m) for e, models in answered.items() for m in models]
    return pairs[0] if len(pairs) == 1 else None


def _preselect(
    endpoint: Endpoint, models: list[str], last: dict[str, str], only: Choice | None
) -> tuple[list[str], int | None]:
    """The model options and which one is chosen before the user picks."""
    if only is not None and only.endpoint == endpoint:
        return models, models.index(only.model)
    if last.get("endpoint") == endpoint.name and last.get("model") in models:
        return models, models.index(last["model"])
    default = default_model_for(endpoint, models)
    if default is None:
        return models, None
    if default not in models:  # a configured default the server does not list: still offered
        models = [default, *models]
    return models, models.index(default)


def _last_model(user: str) -> dict[str, str]:
    # Read from the database once per session, not on every rerun.
    if LAST_MODEL not in st.session_state:
        st.session_state[LAST_MODEL] = store.get_preference(user, LAST_MODEL) or {}
    return st.session_state[LAST_MODEL]


def remember(user: str, choice: Choice) -> None:
    """Remember the model a message was sent to (written only when it changes)."""
    value = {"endpoint": choice.endpoint.name, "model": choice.model}
    if _last_model(user) != value:
        store.set_preference(user, LAST_MODEL, value)
        st.session_state[LAST_MODEL] = value


# What the user set in the chat's sidebar, kept apart from the widgets' own state: Streamlit
# drops the state of widgets a run does not draw, so a visit to Settings would wipe it.
KEPT = "chat_kept"


def _kept(key: str, default: Any) -> dict[str, Any]:
    """A widget's key and callback: its state restored from our copy when Streamlit dropped it."""
    kept: dict[str, Any] = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        st.session_state[key] = kept.get(key, default)
    return {"key": key, "on_change": _keep, "args": (key,)}


def _keep(key: str) -> None:
    # A callback: it runs on the next rerun even when that rerun draws another page.
    st.session_state.setdefault(KEPT, {})[key] = st.session_state[key]


def params_picker(*, key: str = "chat") -> Params:
    """Sampling settings in a sidebar expander; untouched means "server default".

    What the user set survives a visit to another page.
    """
    with st.sidebar.expander(t("params.title"), icon=":material/tune:"):
        custom = st.toggle(t("params.custom"), **_kept(f"{key}_custom_params", False))
        temperature = st.slider(t("params.temperature"), *PARAM_RANGES["temperature"], step=0.05,
                                disabled=not custom, **_kept(f"{key}_temperature", 0.7))
        top_p = st.slider(t("params.top_p"), *PARAM_RANGES["top_p"], step=0.01, disabled=not custom,
                          **_kept(f"{key}_top_p", 1.0))
        max_tokens = st.number_input(t("params.max_tokens"), min_value=0,  # 0: not set
                                     max_value=int(PARAM_RANGES["max_tokens"][1]),
                                     step=256, help=t("params.max_tokens_help"),
                                     **_kept(f"{key}_max_tokens", 0))
        seed = st.number_input(t("params.seed"), min_value=0, value=None, step=1,
                               help=t("params.seed_help"), **_kept(f"{key}_seed", None))
    return Params(
        temperature=temperature if custom else None,
        top_p=top_p if custom else None,
        max_tokens=int(max_tokens) or None,
        seed=None if seed is None else int(seed),
    )


def system_prompt(*, key: str = "chat") -> str:
    """The system prompt box in the sidebar; what the user typed survives a page switch."""
    return st.sidebar.text_area(t("chat.system"), placeholder=t("chat.system_hint"),
                                **_kept(f"{key}_system", ""))
