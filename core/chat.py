"""The chat turn without streamlit: a question saved in its conversation with its answer, the
request built from the branch it ends, the metered call and its `Run`, the answer saved from
the worker, and titles.

Like `core.compare` for compare: `core.ui.chat` keeps the session's state and draws, and a
test drives every step here without Streamlit. The answer exists from the moment the turn is
made (a message with status running, its text written with the call's heartbeat), so a
reload or a crash never loses it. A turn is returned before it starts (`start()`), so the
page can register it first: a run that went out is always one the next script run finds. Its
answer is completed by the run's worker thread (`on_end`), so a Stop or a rerun that ends the
script run loses nothing; a title is asked after that, in a run of its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Engine

from core import conversations as convs
from core import writes
from core.config import Endpoint
from core.conversations import ChatMessage, Conversation
from core.conversations_context import (
    Fit,
    context_window,
    fit_context,
    reserve_for_answer,
    sendable,
)
from core.metering import Call
from core.providers import Message, Params, ProviderError
from core.runner import Run

MAX_MESSAGE_CHARS = 500_000
TITLE_TIMEOUT_S = 60.0

TITLE_PROMPT = (
    "Write a title of at most six words (or twelve Chinese characters) for a conversation "
    "that starts with the message below, in the message's language. Answer with the title "
    "only, no quotes, no final punctuation.\n\nMessage:\n{text}"
)


# The turns whose answer is still streaming in this process, by the answer's message id.
_live: dict[int, ChatTurn] = {}
_live_lock = threading.Lock()


class ChatRefused(ValueError):
    """A message the flow will not send; `key` and `context` make the sentence to show."""

    def __init__(self, key: str, **context: str) -> None:
        self.key = key
        self.context = context
        super().__init__(key)


@dataclass(frozen=True)
class Settings:
    """Where a message goes and how: the endpoint, the model, its parameters, the system
    prompt. A conversation remembers the settings it was last sent with."""

    endpoint: Endpoint
    model: str
    params: Params = Params()
    system: str = ""


@dataclass(frozen=True)
class Request:
    """What one turn sends: the messages that fit the model's window and the parameters."""

    fit: Fit
    params: Params  # as sent: Ollama gets the window it should use (num_ctx)
    window: int  # the model's context window, in tokens

    @property
    def messages(self) -> list[Message]:
        """The system prompt (when set) and the turns that fit, oldest first."""
        return self.fit.messages


def clean_prompt(text: str | None) -> str | None:
    """The message to send, or None when there is nothing to send."""
    if text is None:
        return None
    text = convs.strip_controls(text)
    return text if text.strip() else None


def request(settings: Settings, path_messages: Sequence[ChatMessage]) -> Request:
    """The request for the branch `path_messages` (oldest first, ending with the question):
    the turns that may be sent, trimmed to the model's window, oldest turn first."""
    window = context_window(settings.endpoint, settings.model)
    reserve = reserve_for_answer(settings.params.max_tokens, window)
    fit = fit_context(settings.system, sendable(path_messages), window, reserve)
    params = settings.params
    if settings.endpoint.kind == "ollama":
        params = replace(params, num_ctx=window)
    return Request(fit, params, window)


class ChatTurn:
    """One question and its answer: the request, the metered call, the run that makes it.

    The answer exists from the moment the turn is made: a message with status running, its
    text written with the call's heartbeat, completed by the run's worker when the call
    ends (`save_reply`), settled as interrupted with its call if the process dies
    (`metering.mark_interrupted`). `start()` sends the request; `stop()` ends it, keeping
    the partial answer; `finished` says whether the answer has been saved. `seq` is the
    conversation's sequence number once the question and the answer were written (what the
    tab that sent it has seen: nothing later in the turn changes it).
    """

    def __init__(self, user: str, cid: str, question: ChatMessage, answer: ChatMessage,
                 call: Call, req: Request, settings: Settings, seq: int, *,
                 ask_title: bool = False, title_model: str | None = None,
                 eng: Engine | None = None) -> None:
        self.user = user
        self.cid = cid
        self.question = question
        self.answer = answer  # as written when the request went out: status running
        self.call = call
        self.request = req
        self.settings = settings
        self.seq = seq
        self.ask_title = ask_title
        self.title_model = title_model or settings.model
        self.title: Run | None = None  # the title's own run, once the answer is saved
        self._title_deadline: threading.Timer | None = None
        self._eng = eng
        assert answer.id is not None
        call.on_beat = functools.partial(convs.beat, cid, answer.id)
        self.run = Run([call], on_end=self._save)

    @property
    def finished(self) -> bool:
        """Whether the answer has ended and been saved."""
        return self.run.finished

    def start(self) -> ChatTurn:
        """Send the request (once); returns self. Until its answer is saved the turn can be
        found by its answer's id (`live`): a reload of the page follows it."""
        assert self.answer.id is not None
        with _live_lock:
            _live[self.answer.id] = self
        self.run.start()
        return self

    def stop(self) -> None:
        """End the answer now; it keeps what it has (thread-safe, idempotent)."""
        self.run.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the answer is saved or `timeout` seconds passed; True if saved."""
        return self.run.wait(timeout)

    def cancel_title(self) -> None:
        """Stop the title being asked, if any: the conversation keeps the one made from its
        first message."""
        if self.title is not None:
            self.title.stop()

    def _save(self, call: Call) -> None:
        """The answer as it ended, saved (on the run's worker thread); then, for the first
        answer of a conversation that asks for titles, the title's own run is started."""
        try:
            status = call.status if call.status in ("ok", "stopped") else "error"
            reply = ChatMessage("assistant", call.text, call.reasoning, status=status,
                                error_kind=error_kind(call.error) if status == "error"
                                else None, call_id=call.row_id, model=call.model)
            assert self.question.id is not None
            try:
                convs.save_reply(self.user, self.cid, reply, parent_id=self.question.id,
                                 key=call.key, eng=self._eng)
                title = convs.get(self.user, self.cid, eng=self._eng).title
            except convs.ConversationNotFound:  # deleted while it streamed: nothing to save to
                return
            except writes.NotSavedYet:  # kept and saved once the database lets it; said so
                return
            if self.ask_title and status == "ok":
                self._ask_title(title)
        finally:
            with _live_lock:
                _live.pop(self.answer.id or 0, None)

    def _ask_title(self, was: str) -> None:
        """A title asked of the model in a run of its own: the answer is saved and the turn
        finished without waiting for it, a Stop or `cancel_title` ends it, and it gives up
        after TITLE_TIMEOUT_S. Whatever it does, only the title can change."""
        call = Call(self.settings.endpoint, self.title_model,
                    title_messages(self.question.text), Params(max_tokens=30),
                    user_id=self.user, source="title", conversation_id=self.cid, eng=self._eng)
        self.title = Run([call], on_end=functools.partial(self._titled, was))
        self._title_deadline = threading.Timer(TITLE_TIMEOUT_S, self.title.stop)
        self._title_deadline.daemon = True
        self.title.start()
        self._title_deadline.start()

    def _titled(self, was: str, call: Call) -> None:
        if self._title_deadline is not None:
            self._title_deadline.cancel()
        if call.status != "ok":
            return  # a failed or stopped title: the one made from the message stays
        title = title_from_answer(self.question.text, call.text)
        # Only over the title made from the message: a rename made meanwhile stands.
        convs.retitle(self.user, self.cid, title, was=was, eng=self._eng)


def error_kind(err: ProviderError | None) -> str | None:
    """How a failed answer is saved: the catalog key of its sentence, less "error."."""
    if err is None:
        return None
    return err.hint.removeprefix("error.")


def remember_settings(user: str, conversation: Conversation | None, settings: Settings, *,
                      seq: int, eng: Engine | None = None) -> tuple[str, int]:
    """The conversation a message goes to (a new one when None) with the settings it is sent
    with remembered; its id and `seq`. `ConversationChanged` when it changed since `seq`."""
    if conversation is None:
        conv = convs.create(user, endpoint=settings.endpoint.name, model=settings.model,
                            system=settings.system, params=settings.params, eng=eng)
        return conv.id, conv.seq
    c = conversation
    if not c.notes and (c.endpoint, c.model, c.system, c.params) == (
            settings.endpoint.name, settings.model, settings.system, settings.params):
        return c.id, seq  # unchanged; stored values that were left out are written over
    return c.id, convs.update_settings(user, c.id, seq=seq, endpoint=settings.endpoint.name,
                                       model=settings.model, system=settings.system,
                                       params=settings.params, eng=eng)


def live(answer_id: int) -> ChatTurn | None:
    """The turn streaming the answer `answer_id` in this process, until the answer is saved;
    None when another process streams it, or nothing does."""
    with _live_lock:
        return _live.get(answer_id)


def send(user: str, prompt: str, settings: Settings, *, conversation: Conversation | None = None,
         parent_id: int | None = None, seq: int = 0, ask_title: bool = False,
         title_model: str | None = None, eng: Engine | None = None) -> ChatTurn:
    """Save `prompt` as a question below `parent_id` in `conversation` (a new conversation when
    None, which is then titled after it, by `title_model` (default: the model answering) when
    `ask_title`), with its answer, running, and return the turn, not yet started.

    `seq` is the conversation's sequence number the user saw: `ConversationChanged` if it was
    written elsewhere since, and nothing is saved. `ChatRefused` for a message over
    `MAX_MESSAGE_CHARS`.
    """
    _check_length(prompt)
    cid, seq = remember_settings(user, conversation, settings, seq=seq, eng=eng)
    question = ChatMessage("user", prompt)
    branch = [*convs.path_to(user, cid, parent_id, eng=eng), question]
    return _turn(user, cid, question, branch, settings, parent_id=parent_id, seq=seq,
                 ask_title=ask_title and parent_id is None, title_model=title_model, eng=eng)


def regenerate(user: str, settings: Settings, conversation: Conversation, question_id: int, *,
               seq: int, edited: str | None = None, ask_title: bool = False,
               title_model: str | None = None, eng: Engine | None = None) -> ChatTurn | None:
    """Answer a question of the branch on screen again (a sibling answer), or, with `edited`,
    save an edited copy of it as its sibling and answer that: each opens a new branch.
    Returns the turn, not yet started; None when the question is no longer on the branch."""
    full = convs.path(user, conversation.id, eng=eng)
    ids = [m.id for m in full]
    if question_id not in ids:
        return None
    at = ids.index(question_id)
    if edited is not None:
        _check_length(edited)
    cid, seq = remember_settings(user, conversation, settings, seq=seq, eng=eng)
    question = full[at] if edited is None else ChatMessage("user", edited)
    parent_id = full[at].parent_id
    return _turn(user, cid, question, [*full[:at], question], settings, parent_id=parent_id,
                 seq=seq, ask_title=ask_title and parent_id is None, title_model=title_model,
                 eng=eng)


def _check_length(text: str) -> None:
    if len(text) > MAX_MESSAGE_CHARS:
        raise ChatRefused("chat.too_long", n=f"{len(text):,}", limit=f"{MAX_MESSAGE_CHARS:,}")


def _turn(user: str, cid: str, question: ChatMessage, branch: list[ChatMessage],
          settings: Settings, *, parent_id: int | None, seq: int, ask_title: bool,
          title_model: str | None, eng: Engine | None) -> ChatTurn:
    """The request for `branch` (ending with `question`), its call, and the question (when
    new) with its running answer written in one transaction."""
    req = request(settings, branch)
    call = Call(settings.endpoint, settings.model, req.messages, req.params, user_id=user,
                source="chat", conversation_id=cid, eng=eng)
    running = ChatMessage("assistant", "", status="running", model=settings.model,
                          call_key=call.key)
    question, answer, seq = convs.start_answer(user, cid, question, running,
                                               parent_id=parent_id, seq=seq, eng=eng)
    return ChatTurn(user, cid, question, answer, call, req, settings, seq,
                    ask_title=ask_title, title_model=title_model, eng=eng)


def title_messages(first_message: str) -> list[Message]:
    """What a title is asked with: the instruction and the conversation's first message."""
    return [Message("user", TITLE_PROMPT.format(text=first_message[:2000]))]


def title_from_answer(first_message: str, answer: str | None,
                      width: int = convs.TITLE_WIDTH) -> str:
    """The title in a model's answer (its first line, quotes and final punctuation taken
    off), or the one made from the message when the answer holds nothing usable."""
    line = next((ln for ln in (answer or "").splitlines() if ln.strip()), "")
    line = line.strip(" \"'“”‘’「」『』《》*#").rstrip("。.!！")
    line = line.strip(" \"'“”‘’「」『』《》*#")
    if not line:
        return convs.title_from_text(first_message, width)
    return convs.title_from_text(line, width)
