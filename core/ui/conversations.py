"""The chat page's sidebar of saved conversations: new, search, the list by day, rename,
delete, what the open one cost, how full its context is, export and import."""

from __future__ import annotations

import contextlib
import functools
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from core import conversations as convs
from core import conversations_list as listing
from core import conversations_transfer as transfer
from core import money
from core.i18n import DEFAULT, set_language, t
from core.ui import chat
from core.ui.render import literal, markdown

LIST_STEP = 50  # conversations listed at first, and how many more "show more" adds
_LIST = "convo_list_n"
_CONFIRM = "convo_confirm_delete"
_IMPORTED = "convo_imported"


def browser_zone() -> tzinfo:
    """The browser's time zone, for "today" and "yesterday"; UTC when it is not known."""
    name = st.context.timezone
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def day_label(day: date, today: date) -> str:
    """Today, Yesterday, or the date."""
    if day == today:
        return t("convo.today")
    if day == today - timedelta(days=1):
        return t("convo.yesterday")
    return day.isoformat()


def sidebar(user: str, cid: str | None) -> None:
    """Everything about saved conversations in the sidebar."""
    side = st.sidebar
    side.button(t("chat.new"), icon=":material/add_comment:", width="stretch",
                key="convo_new", on_click=chat.new_chat)
    if cid is not None:
        _open_one(user, cid)
    found = side.text_input(t("convo.search"), key="convo_search",
                            placeholder=t("convo.search_hint"), icon=":material/search:")
    if found and found.strip():
        hits = listing.search(user, found, limit=LIST_STEP)
        if not hits:
            side.caption(t("convo.no_hits"))
        for hit in hits:
            _item(hit.conversation, cid, hit.snippet)
    else:
        _listing(user, cid)
    _import(user)
    side.toggle(t("convo.ask_titles"), key=chat.ASK_TITLES, help=t("convo.ask_titles_help"))


def _listing(user: str, cid: str | None) -> None:
    side = st.sidebar
    n = st.session_state.get(_LIST, LIST_STEP)
    items = listing.list_conversations(user, limit=n + 1)
    more, items = len(items) > n, items[:n]
    zone = browser_zone()
    today = datetime.now(zone).date()
    for day, group in listing.group_by_day(items, zone):
        side.caption(day_label(day, today))
        for item in group:
            _item(item, cid)
    if more:
        side.button(t("convo.more"), key="convo_more", type="tertiary",
                    on_click=_more)


def _more() -> None:
    st.session_state[_LIST] = st.session_state.get(_LIST, LIST_STEP) + LIST_STEP


def _item(item: listing.Summary, cid: str | None, snippet: str = "") -> None:
    # A title may be the model's (or an imported file's): shown as typed, never as Markdown.
    title = literal(item.title) if item.title else t("convo.untitled")
    st.sidebar.button(title, key=f"convo_open_{item.id}", width="stretch",
                      type="primary" if item.id == cid else "tertiary",
                      on_click=chat.go_to, args=(item.id,),
                      help=literal(snippet) if snippet else None)


def _open_one(user: str, cid: str) -> None:
    """The open conversation: its running total, its context gauge, rename, delete, export."""
    side = st.sidebar
    spent = listing.spent(user, cid)
    if spent.calls:
        cost = money.cost(spent.cost_usd, money.view(user), partial=not spent.cost_complete)
        side.caption(t("convo.spent", calls=spent.calls, input=spent.input_tokens,
                       output=spent.output_tokens, cost=cost))
    fit = st.session_state.get(chat.FIT)
    if fit and fit.get("cid") == cid and fit["window"]:
        used = min(1.0, fit["tokens"] / fit["window"])
        side.progress(used, text=t("convo.gauge", used=f"{fit['tokens']:,}",
                                    window=f"{fit['window']:,}"))
        if fit["left_out"]:
            side.caption(t("convo.left_out", n=fit["left_out"]))
    with side.popover(t("convo.manage"), icon=":material/more_horiz:", width="stretch"):
        try:
            conv = convs.get(user, cid)
        except convs.ConversationNotFound:
            return
        st.text_input(t("convo.rename"), value=conv.title, key=f"convo_title_{cid}")
        st.button(t("convo.rename_do"), key="convo_rename", on_click=_rename,
                  args=(user, cid))
        lang = st.session_state.get("language", DEFAULT)
        st.download_button(t("convo.export_md"), key="convo_export_md",
                           data=functools.partial(_export_md, user, cid, lang),
                           file_name=f"conversation-{cid}.md", mime="text/markdown",
                           icon=":material/download:", on_click="ignore")
        st.download_button(t("convo.export_json"), key="convo_export_json",
                           data=functools.partial(transfer.export_json, user, cid,
                                                  all_branches=True),
                           file_name=f"conversation-{cid}.json", mime="application/json",
                           icon=":material/download:", on_click="ignore")
        if st.session_state.get(_CONFIRM) == cid:
            st.warning(t("convo.delete_confirm"), icon=":material/delete_forever:")
            st.button(t("convo.delete_yes"), key="convo_delete_yes", type="primary",
                      on_click=_delete, args=(user, cid))
            st.button(t("convo.delete_no"), key="convo_delete_no",
                      on_click=st.session_state.pop, args=(_CONFIRM, None))
        else:
            st.button(t("convo.delete"), key="convo_delete", icon=":material/delete:",
                      on_click=st.session_state.__setitem__, args=(_CONFIRM, cid))


def _export_md(user: str, cid: str, lang: str) -> str:
    # Built on click, outside the script run: the reader's language is set again here.
    set_language(lang)
    return transfer.export_markdown(user, cid)


def _rename(user: str, cid: str) -> None:
    title = (st.session_state.get(f"convo_title_{cid}") or "").strip()
    if not title:
        return
    view = st.session_state.get(chat.VIEW, {})
    try:
        seq = convs.rename(user, cid, title)
    except convs.ConversationNotFound:
        return
    if view.get("cid") == cid:
        view["seq"] = max(view.get("seq", 0), seq)


def _delete(user: str, cid: str) -> None:
    st.session_state.pop(_CONFIRM, None)
    chat.forget(cid)  # its reply and title stop: nothing is saved into it
    if st.session_state.get(chat.VIEW, {}).get("cid") == cid:
        chat.new_chat()
    with contextlib.suppress(convs.ConversationNotFound):  # gone already: as wanted
        convs.delete_conversation(user, cid)


def _import(user: str) -> None:
    with st.sidebar.expander(t("convo.import"), icon=":material/upload_file:"):
        upload = st.file_uploader(t("convo.import_file"), type=["json"], key="convo_import",
                                  help=t("convo.import_help"))
        if upload is None:
            return
        if st.session_state.get(_IMPORTED) == upload.file_id:
            return  # imported on an earlier run: the file is still in the box
        st.session_state[_IMPORTED] = upload.file_id
        cid, problem = import_file(user, upload.getvalue())
        if problem is not None:
            st.error(markdown(problem), icon=":material/error:")
            return
        assert cid is not None
        chat.go_to(cid)
        st.rerun()


def import_file(user: str, data: bytes) -> tuple[str | None, str | None]:
    """An uploaded file as a new conversation: its id, or the sentence saying why not."""
    try:
        return transfer.import_json(user, data).id, None
    except transfer.ImportRefused as err:
        return None, t(err.key, **err.context)
