"""Connections: what is configured, does it answer, and adding one for this session."""

import streamlit as st

from core import connections, ui
from core.config import PRESETS, ConfigError, make_endpoint
from core.i18n import t
from core.providers import ProviderError

endpoints, problems = ui.endpoints()
# After an endpoint is added the page reruns: the list shows it, and the typed key is wiped
# from the form (it lives on only inside the session's endpoint).
added_result = st.session_state.pop("settings_added", None)
if st.session_state.pop("settings_clear_key", False):
    st.session_state["add_api_key"] = ""

st.title(t("settings.title"))
for problem in problems:
    ui.show_config_error(problem)

st.subheader(t("settings.endpoints"))
if not endpoints:
    st.info(t("connect.none"), icon=":material/power_off:")
else:
    st.dataframe(
        [
            {
                t("settings.col_name"): e.name,
                t("settings.col_kind"): PRESETS[e.preset].label,
                t("settings.col_url"): e.base_url,
                t("settings.col_key"): e.masked_key,
                t("settings.col_source"): t(f"source.{e.source}"),
            }
            for e in endpoints
        ],
        hide_index=True,
        width="stretch",
    )

for endpoint in endpoints:
    with st.expander(f"{endpoint.name} · {endpoint.base_url}", icon=":material/lan:"):
        left, right = st.columns([1, 1])
        if left.button(t("settings.test"), key=f"test_{endpoint.name}",
                       icon=":material/network_check:"):
            try:
                found = connections.check(endpoint, user_id=ui.current_user())
            except ProviderError as err:
                ui.show_error(err)
            else:
                ui.store_models(endpoint, found.models)
                if found.probed:
                    st.success(t("settings.test_probe_ok", model=found.probed,
                                 ms=f"{found.ms:.0f}"), icon=":material/check_circle:")
                else:
                    st.success(t("settings.test_ok", n=len(found.models), ms=f"{found.ms:.0f}"),
                               icon=":material/check_circle:")
                if found.models:
                    st.caption(", ".join(found.models[:50]))
        if endpoint.source == "session" and right.button(
            t("settings.remove"), key=f"remove_{endpoint.name}", icon=":material/delete:"
        ):
            ui.remove_session_endpoint(endpoint.name)
            st.rerun()
        if connections.can_pull(endpoint):
            with st.form(f"pull_form_{endpoint.name}", border=False):
                name = st.text_input(t("settings.pull_model"), placeholder="llama3.2:1b",
                                     help=t("settings.pull_help"),
                                     key=f"pull_name_{endpoint.name}")
                pull = st.form_submit_button(t("settings.pull"), icon=":material/download:",
                                             key=f"pull_{endpoint.name}")
            if pull and name.strip():
                bar = st.progress(0.0, text=t("settings.pull_start", model=name.strip()))
                try:
                    for step in connections.pull(endpoint, name):
                        bar.progress(step.fraction, text=step.status)
                except ProviderError as err:
                    ui.show_error(err)
                else:
                    bar.progress(1.0, text=t("settings.pull_done", model=name.strip()))
                    ui.cached_models(endpoint, refresh=True)

st.subheader(t("settings.add"))
st.caption(t("settings.add_help"))
preset_id = st.selectbox(t("settings.preset"), list(PRESETS),
                         format_func=lambda p: PRESETS[p].label, key="add_preset")
preset = PRESETS[preset_id]
with st.form("add_endpoint", clear_on_submit=False):
    name = st.text_input(t("settings.name"), value=preset.label)
    base_url = st.text_input(
        t("settings.base_url"),
        value=preset.base_url,
        placeholder="https://YOUR-RESOURCE.openai.azure.com" if preset.kind == "azure"
        else "http://localhost:8000/v1",
        help=t("settings.base_url_help"),
    )
    api_key = "" if preset.kind == "ollama" else st.text_input(
        t("settings.api_key"), type="password", help=t("settings.api_key_help"),
        key="add_api_key",
    )
    api_version = st.text_input(t("settings.api_version"), value="2024-10-21") \
        if preset.kind == "azure" else None
    models = st.text_input(t("settings.models"), help=t("settings.models_help"))
    proxy = st.text_input(t("settings.proxy"), placeholder="socks5://127.0.0.1:7890",
                          help=t("settings.proxy_help"))
    added = st.form_submit_button(t("settings.add_button"), icon=":material/add:", type="primary")
if added:
    try:
        endpoint = make_endpoint(name, preset_id, base_url=base_url, api_key=api_key,
                                 api_version=api_version, models=models.split(","),
                                 proxy=proxy)
    except ConfigError as err:
        ui.show_config_error(err)
    else:
        ui.add_session_endpoint(endpoint)
        try:
            found: int | ProviderError = len(ui.cached_models(endpoint, refresh=True))
        except ProviderError as err:
            found = err
        st.session_state["settings_added"] = (endpoint.name, found)
        st.session_state["settings_clear_key"] = True
        st.rerun()
if added_result is not None:
    added_name, found = added_result
    if isinstance(found, ProviderError):
        st.warning(t("settings.added_but", name=added_name), icon=":material/warning:")
        ui.show_error(found)
    else:
        st.success(t("settings.added", name=added_name, n=found), icon=":material/check_circle:")

st.subheader(t("settings.permanent"))
st.markdown(t("settings.permanent_help"))
st.code(
    "# .env\nOPENAI_API_KEY=sk-...\n# OPENAI_BASE_URL=https://api.deepseek.com/v1\n"
    "# OLLAMA_HOST=http://127.0.0.1:11434\n\n# .streamlit/secrets.toml\n[[endpoints]]\n"
    'name = "vLLM"\npreset = "custom"\nbase_url = "http://localhost:8000/v1"\napi_key = "none"\n',
    language="toml",
)
