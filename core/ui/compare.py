"""Compare page widgets: pane pickers, one Run for all panes, numbers, votes, leaderboard."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import select

from core import compare, conversations, money, rating, store, writes
from core.config import Endpoint
from core.i18n import t
from core.providers import ProviderError
from core.ui.errors import KINDS, show_blind_error, show_error
from core.ui.pickers import cached_models
from core.ui.render import literal, markdown
from core.ui.render import show as show_markdown
from core.ui.stream import show_run

RUN_KEY = "cmp_run"  # the compare.LiveTurn this session sent last
ID_KEY = "cmp_id"
# How often a turn that another run of the page sent is drawn again.
WATCH_S = 1.0


def _models(endpoint: Endpoint) -> list[str]:
    try:
        return cached_models(endpoint)
    except ProviderError:
        return [endpoint.default_model] if endpoint.default_model else []


def pane_pickers(endpoints: list[Endpoint], n: int, *, per_pane: bool = False
                 ) -> list[tuple[Endpoint, str, str | None, dict | None] | None]:
    """An endpoint and model selector per pane, side by side; with `per_pane`, each pane's
    own system prompt and temperature (empty means the shared one)."""
    names = [e.name for e in endpoints]
    out: list[tuple[Endpoint, str, str | None, dict | None] | None] = []
    for i, col in enumerate(st.columns(n)):
        with col:
            name = st.selectbox(t("compare.endpoint", pane=compare.pane_label(i)), names,
                                index=i % len(names), key=f"cmp_ep_{i}")
            endpoint = endpoints[names.index(name)]
            models = _models(endpoint)
            model = st.selectbox(t("compare.model", pane=compare.pane_label(i)), models,
                                 index=min(i, len(models) - 1) if models else None,
                                 key=f"cmp_model_{i}_{name}", accept_new_options=True)
            system, params = None, None
            if per_pane:
                system = st.text_area(t("chat.system"), key=f"cmp_system_{i}") or None
                temp = st.number_input(t("params.temperature"), 0.0, 2.0, value=None,
                                       step=0.1, key=f"cmp_temp_{i}")
                params = None if temp is None else {"temperature": temp}
            out.append((endpoint, model.strip(), system, params)
                       if model and model.strip() else None)
    return out


def pool_picker(endpoints: list[Endpoint]) -> list[tuple[str, str]]:
    """Blind mode: the models the panes are drawn from."""
    options = [compare.model_key(e.name, m) for e in endpoints for m in _models(e)]
    picked = st.multiselect(t("compare.pool"), options, key="cmp_pool",
                            default=options[:2], help=t("compare.pool_help"))
    pairs = []
    for key in picked:
        model, _, endpoint = key.rpartition(" @ ")
        pairs.append((endpoint, model))
    return pairs


def ollama_note(panes: list[tuple[Endpoint, str, str | None, dict | None] | None]) -> None:
    """Two models on one Ollama server run one after the other (or swap): say so."""
    servers: dict[str, set[str]] = {}
    for pane in panes:
        if pane and pane[0].kind == "ollama":
            servers.setdefault(pane[0].base_url, set()).add(pane[1])
    if any(len(models) > 1 for models in servers.values()):
        st.info(t("compare.ollama_note"), icon=":material/info:")


def start(user: str, cid: str, prompt: str, endpoints: list[Endpoint]) -> None:
    """Record the turn and send it to every pane at once (`core.compare.send`)."""
    st.session_state[RUN_KEY] = compare.send(user, cid, prompt, {e.name: e for e in endpoints})


def numbers(comp: compare.Comparison, turn: compare.Turn) -> pd.DataFrame | None:
    """Per-pane figures of a turn from the call log, or None while hidden or absent."""
    if not comp.revealed:
        return None
    ids = [a.call_id for a in turn.answers if a.call_id is not None]
    if not ids:
        return None
    c = store.calls
    with store.engine().connect() as conn:
        rows = {r.id: r for r in conn.execute(select(c).where(c.c.id.in_(ids),
                                                              c.c.user_id == comp.user_id))}
    data, finished = [], []
    for a in turn.answers:
        r = rows.get(a.call_id)
        if r is None:
            continue
        if r.status == "ok":
            finished.append(f"{compare.pane_label(a.position)} · {r.model}")
        gen = (r.total_s or 0) - (r.ttft_s or 0)
        data.append({
            t("compare.pane"): f"{compare.pane_label(a.position)} · {r.model}",
            t("compare.ttft"): r.ttft_s, t("compare.total"): r.total_s,
            t("compare.load"): r.load_s,
            t("compare.tokens_in"): r.input_tokens, t("compare.tokens_out"): r.output_tokens,
            t("compare.tps"): r.output_tokens / gen if gen > 0 and r.output_tokens else None,
            t("compare.cost"): float(r.cost_usd) if r.cost_usd is not None else None,
        })
    if not data:
        return None
    df = pd.DataFrame(data).set_index(t("compare.pane"))
    # Numeric dtypes, so a figure the server did not give shows as "—", not "None".
    counts = [t("compare.tokens_in"), t("compare.tokens_out")]
    df = df.astype({c: "Int64" if c in counts else "float64" for c in df.columns})
    if df[t("compare.load")].isna().all():  # only Ollama reports a load time: no empty column
        df = df.drop(columns=t("compare.load"))
    df.attrs["finished"] = finished  # only a pane that answered in full can be the best
    return df


def styled_numbers(df: pd.DataFrame, view: money.View | None = None) -> Any:
    """The figures with the best of each highlighted among the panes that answered in full.

    The cost column keeps dollars, so the cheapest is found on exact amounts, and shows them
    as money in the viewer's currency ($0.000038, "free", "unknown"), never rounded to 0.
    """
    cost = t("compare.cost")
    lower = [t("compare.ttft"), t("compare.total"), cost]
    higher = [t("compare.tps")]
    best = df.attrs.get("finished", list(df.index))  # a failed pane's 0 s or $0 is no record
    return (df.style.highlight_min(subset=(best, lower), color="#c8f7c5")
            .highlight_max(subset=(best, higher), color="#c8f7c5")
            .format(precision=3, na_rep="—")
            .format(lambda usd: money.cost(usd, view), subset=[cost]))


def show_numbers(df: pd.DataFrame, view: money.View | None = None) -> None:
    """The figures with the best of each highlighted, and a small chart."""
    styled = styled_numbers(df, view)
    st.dataframe(styled, width="stretch")
    # Side by side, not stacked: a stacked bar would add the first token to the total.
    st.bar_chart(df[[t("compare.ttft"), t("compare.total")]], horizontal=True, height=160,
                 stack=False)


def vote_buttons(user: str, comp: compare.Comparison, turn: compare.Turn) -> None:
    """A better / B better / tie / both bad; with more panes, pick the best."""
    choices: list[tuple[str, str, int | None]] = [
        (t("compare.best", pane=compare.pane_label(p.position)), "win", p.position)
        for p in comp.panes]
    choices += [(t("compare.tie"), "tie", None), (t("compare.both_bad"), "both_bad", None)]
    for col, (label, outcome, winner) in zip(st.columns(len(choices)), choices, strict=True):
        if col.button(label, key=f"cmp_vote_{comp.id}_{turn.turn}_{outcome}_{winner}",
                      width="stretch"):
            try:
                compare.vote(user, comp.id, turn.turn, outcome, winner)
            except compare.CompareError as err:
                st.warning(t(f"compare.refused.{err.reason}"), icon=":material/block:")
            else:
                st.rerun()


def vote_label(vote: dict) -> str:
    """The verdict as its button said it: "A is best", "Tie", "Both bad"."""
    if vote["outcome"] == "win":
        return t("compare.best", pane=compare.pane_label(vote["winner"]))
    return t("compare.tie") if vote["outcome"] == "tie" else t("compare.both_bad")


def show_comparison(user: str, comp: compare.Comparison) -> None:
    """Every turn: the prompt, the panes' answers (live for the running turn), numbers, vote."""
    live: compare.LiveTurn | None = st.session_state.get(RUN_KEY)
    if live is not None and live.cid != comp.id:
        live = None
    if (live is not None and live.run.finished
            and any(a.status == "running" for turn in comp.turns for a in turn.answers)):
        # The run ended (and saved its answers) after `comp` was read: read it again, or the
        # page would draw answers still "running" and offer no vote.
        comp = compare.load(user, comp.id)
    panes = compare.public_panes(comp)
    if writes.unsaved(comparison_id=comp.id):
        st.warning(t("writes.unsaved_answers"), icon=":material/cloud_off:")
    for turn in comp.turns:
        with st.chat_message("user"):
            show_markdown(turn.prompt)
        cols = st.columns(len(panes))
        for col, pane in zip(cols, panes, strict=True):
            title = f"**{pane['label']}**"
            if pane["model"]:
                title += f" · {literal(pane['model'])} ({literal(pane['endpoint'])})"
            col.markdown(title)
        mine = live is not None and live.turn == turn.turn
        if mine and not live.run.finished:
            slots = [cols[live.position(c)].container() for c in live.run.calls]
            show_run(live.run, slots)
            st.rerun()  # redraw from the saved answers, with numbers and the vote
        if not mine and any(a.status == "running" for a in turn.answers):
            # Sent by another run of the page (a reload, a restart since): followed from
            # this process's run, or from the answers' heartbeat in the database.
            _watch(user, comp.id, turn.turn)
            continue
        errors = {live.position(c): c.error for c in live.run.calls if c.error} if mine else {}
        for col, answer in zip(cols, turn.answers, strict=True):
            with col:
                if answer.text:
                    show_markdown(answer.text)
                if (answer.status == "error" or answer.position in errors) and not comp.revealed:
                    # Blind until the vote: what failed, never which model or server.
                    error = errors.get(answer.position)
                    show_blind_error(error.kind.value if error else answer.error_kind, col)
                elif answer.position in errors:  # the full sentence while the session has it
                    show_error(errors[answer.position], col)
                elif answer.status == "error":
                    st.error(t("compare.failed", kind=t(f"error.what.{answer.error_kind}")
                               if answer.error_kind in KINDS else "?"),
                             icon=":material/error:")
                elif answer.status == "stopped":
                    st.caption(t("compare.stopped"))
                elif answer.status == "interrupted":
                    st.warning(t("compare.interrupted"), icon=":material/power_off:")
        df = numbers(comp, turn)
        if df is not None:
            show_numbers(df, money.view(user))
        if turn.vote is None and all(a.status != "running" for a in turn.answers):
            vote_buttons(user, comp, turn)
        elif turn.vote is not None:
            st.caption(f"{t('compare.voted')} {vote_label(turn.vote)}")
    if comp.turns and comp.revealed and all(a.status != "running"
                                            for a in comp.turns[-1].answers):
        continue_buttons(user, comp)


@st.fragment(run_every=WATCH_S)
def _watch(user: str, cid: str, turn: int) -> None:
    """A turn another run of the page sent, its panes redrawn every WATCH_S: from its run when
    this process answers it (with Stop), else from the answers' heartbeat in the database.
    Once every pane has ended the whole page is drawn again, with numbers and the vote."""
    live = compare.live_turn(cid, turn)
    texts: dict[int, str] = {}
    if live is not None and not live.run.finished:
        texts = {live.position(c): c.text for c in live.run.calls}
    try:
        answers = compare.load(user, cid).turns[turn].answers
    except (compare.CompareError, IndexError):
        st.rerun()
        return
    if all(a.status != "running" for a in answers) and not texts:
        st.rerun()
    for col, answer in zip(st.columns(len(answers)), answers, strict=True):
        with col:
            text = texts.get(answer.position, answer.text)
            if answer.status == "running":
                st.markdown(markdown(text) + " ▌" if text else f":gray[{t('chat.waiting')}]")
            elif text:
                show_markdown(text)
    if live is not None and not live.run.finished:
        st.button(t("run.stop"), key=f"cmp_watch_stop_{cid}_{turn}",
                  icon=":material/stop_circle:", on_click=live.run.stop)
    else:
        st.caption(t("chat.following"))


def continue_buttons(user: str, comp: compare.Comparison) -> None:
    """Under the last turn: carry on with one pane's thread as a new chat conversation."""
    cols = st.columns(len(comp.panes))
    for col, pane in zip(cols, comp.panes, strict=True):
        if col.button(t("compare.continue_in_chat", pane=compare.pane_label(pane.position)),
                      key=f"cmp_continue_{comp.id}_{pane.position}",
                      icon=":material/forum:", width="stretch"):
            system, params = compare.pane_settings(comp, pane.position)
            cid, _ = conversations.continue_in_chat(
                user, endpoint=pane.endpoint, model=pane.model,
                thread=compare.pane_thread(comp, pane.position), system=system, params=params)
            st.switch_page("app_pages/chat.py", query_params={"c": cid})


def show_leaderboard(user: str) -> None:
    """The user's models by rating, with their call-log medians."""
    rows = rating.leaderboard(user)
    if not rows:
        st.caption(t("compare.no_votes"))
        return
    view = money.view(user)
    st.dataframe(pd.DataFrame([{
        t("compare.model_col"): r.model, t("compare.rating"): round(r.rating),
        t("compare.interval"): f"{r.low:.0f} – {r.high:.0f}",
        t("compare.wins"): r.wins, t("compare.losses"): r.losses, t("compare.ties"): r.ties,
        t("compare.win_rate"): r.win_rate, t("compare.ttft"): r.median_ttft_s,
        t("compare.tps"): r.median_tokens_per_s,
        t("compare.cost"): money.cost(r.median_cost_usd, view),
    } for r in rows]), width="stretch", hide_index=True, column_config={
        # Figures a reader compares at a glance, not four decimals of noise.
        t("compare.win_rate"): st.column_config.NumberColumn(format="percent"),
        t("compare.ttft"): st.column_config.NumberColumn(format="%.2f"),
        t("compare.tps"): st.column_config.NumberColumn(format="%.1f"),
    })


def show_history(user: str) -> None:
    """Past comparisons in the sidebar, newest first; a click reopens one."""
    for item in compare.history(user, limit=20):
        label = literal(item["title"]) if item["title"] else t("compare.untitled")
        if st.sidebar.button(label, key=f"cmp_hist_{item['id']}", type="tertiary"):
            st.session_state[ID_KEY] = item["id"]
            st.session_state.pop(RUN_KEY, None)
            st.rerun()


def current(user: str) -> Any:
    """The open comparison, or None."""
    cid = st.session_state.get(ID_KEY)
    if not cid:
        return None
    try:
        return compare.load(user, cid)
    except compare.CompareError:
        st.session_state.pop(ID_KEY, None)
        return None
