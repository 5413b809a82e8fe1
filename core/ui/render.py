"""The one renderer for text a model or a server wrote: Markdown that cannot reach out.

Model text is untrusted: a prompt injection can make an answer say anything, for example an
image whose address carries the conversation to someone else's server. This module parses
such text with a CommonMark parser (markdown-it-py, with GFM tables and footnotes as
Streamlit reads them), edits it where a construct could reach out, and gives st.markdown
Markdown again, never HTML:

- an image (inline, reference-style, in a link, a table or a footnote) becomes a link: an
  image icon and its alt text (or the word "image"), pointing where the image was. The
  browser never fetches it.
- a link to anything but http(s) or mailto is shown as text. Streamlit opens the others in a
  new tab with rel="noopener noreferrer" (its frontend's own link renderer does that).
- raw HTML, block or inline, is left as it is: st.markdown without `unsafe_allow_html`
  shows it as text (checked in a browser by the e2e tests). `show` and `markdown` here never
  allow HTML.
- Streamlit also reads a few things CommonMark does not (remark-directive, remark-math, GFM
  bare links), and each could make it see a link, image or code span where the parser here
  sees none. Those are escaped where they would disagree: `:name[..]`/`:name{..}`
  directives and `::` lines; `$` math whose text holds a backtick, a bracket or `<`; `$$`
  lines that are not a whole display-math paragraph; a code span or link glued to a bare
  `www.` / `http://` address. Math that cannot disagree still renders.

Every edit changes one line in place (an escape or a replacement, never a line break), so the
text keeps its lines and its block structure. The text is parsed again after each round of
edits until nothing is left to edit; text whose parser positions cannot be trusted (tabs inside
a container, say) is escaped whole, character by character, as a last resort.

Extending (math, code copy, tables are next): the parser is `_parser()`; each construct is a
token rule in `RULES`, a function from a parsed token (and where it sits) to edits. A new
construct is a markdown-it rule recognising it plus a rule here saying what to change.

`LiveMarkdown` renders a growing answer cheaply: the text before the last top-level block that
follows a blank line is kept from the frame before and only the rest is parsed again (see its
docstring for when that is valid).

One concern, kept whole (~620 lines): the parser's rules and the edits they make must agree,
and they read best side by side.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import streamlit as st
from markdown_it import MarkdownIt, rules_inline
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

from core.i18n import t

ALLOWED_LINKS = ("http://", "https://", "mailto:")
IMAGE_ICON = ":material/image:"  # Streamlit's own icon shortcode: drawn locally, no request
MAX_PASSES = 12  # rounds of edits; more means text built to defeat the parser: escaped whole
CACHE_SIZE = 512  # finished texts kept rendered (chat history is drawn again on every rerun)

_SRC = "owngpt_src"  # env: the inline text being parsed at the top level
_MARKS = "owngpt_marks"  # env: `$` and `:` positions of that text, as the parser met them
_PUNCTUATION = str.maketrans({c: "\\" + c for c in string.punctuation})
# What can start Markdown inside one line of text: escaped in a name. `-`, `.`, `:`, `(` and
# the like are not (gpt-4o-mini, llama3.2:1b and URLs read as typed in the page's source).
_MARKUP = str.maketrans({c: "\\" + c for c in "\\`*_[]<>!$|~{}&#"})
_LIST_START = re.compile(r"^(\d{1,9})([.)])|^([-+=])")
_BARE_LINKS = ("www.", "http://", "https://")  # what starts a GFM bare link in Streamlit
_BLANK = " \t"


@dataclass(frozen=True)
class Edit:
    """Put `put` in place of `drop` characters at offset `at`, where `expect` stands."""

    at: int
    expect: str
    put: str
    drop: int = 0


@dataclass
class Spot:
    """Where an inline token's text sits: its token, the block token before it, and the
    inline text itself (`src`), whose offsets the token rules speak in."""

    token: Token
    before: Token | None
    src: str


# -- the parser -------------------------------------------------------------------------------


def _tracked(rule: Callable[[StateInline, bool], bool]) -> Callable[[StateInline, bool], bool]:
    """An inline rule that also notes, on the token it makes, where in the text it began
    and ended (`meta["at"]`, `meta["end"]`): markdown-it keeps no inline positions."""

    def run(state: StateInline, silent: bool) -> bool:
        start, count = state.pos, len(state.tokens)
        if not rule(state, silent):
            return False
        if not silent and state.env.get(_SRC) is state.src:
            for token in state.tokens[count:]:
                if token.type != "text":  # the text pending before it is flushed first
                    token.meta["at"], token.meta["end"] = start, state.pos
                    break
        return True

    return run


def _marks(state: StateInline, silent: bool) -> bool:
    """Note each `$` and directive `:` the parser meets as live text (not in code, not in a
    link's address); it never consumes anything."""
    if silent or state.env.get(_SRC) is not state.src:
        return False
    src, pos = state.src, state.pos
    if src[pos] == "$" or (src[pos] == ":" and _directive_at(src, pos)):
        state.env[_MARKS].append(pos)
    return False


def _directive_at(src: str, pos: int) -> bool:
    """Whether remark-directive could start at this colon: `:name[` or `:name{`, or a line
    that begins with `::` (leaf and container directives)."""
    nxt = src[pos + 1:pos + 2]
    if nxt == ":" and _line_start(src, pos):
        return True
    if not nxt.isascii() or not nxt.isalpha():
        return False
    end = pos + 2
    while end < len(src) and (src[end].isascii() and (src[end].isalnum() or src[end] in "-_")):
        end += 1
    return src[end:end + 1] in ("[", "{")


def _inline(state: StateCore) -> None:
    """markdown-it's inline stage, telling the rules which text is the block's own."""
    for token in state.tokens:
        if token.type == "inline":
            token.children = []
            state.env[_SRC] = token.content
            state.env[_MARKS] = token.meta["marks"] = []
            state.md.inline.parse(token.content, state.md, state.env, token.children)


@functools.cache
def _parser() -> MarkdownIt:
    """CommonMark with GFM tables and footnotes (what Streamlit's remark-gfm reads), HTML
    recognised (so it is not taken for text), and every link kept whatever its scheme (the
    rules decide). Emphasis is off: it never hides nor reveals a link or an image."""
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.use(footnote_plugin, inline=False, move_to_end=False)
    md.disable(["emphasis", "balance_pairs", "fragments_join", "text_join"])
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    for name, rule in (("image", rules_inline.image), ("link", rules_inline.link),
                       ("autolink", rules_inline.autolink), ("backticks", rules_inline.backtick)):
        md.inline.ruler.at(name, _tracked(rule))
    md.inline.ruler.at("html_inline", _tracked(rules_inline.html_inline))
    md.inline.ruler.before("text", "owngpt_marks", _marks)
    md.core.ruler.at("inline", _inline)
    return md


# -- token rules: what to change, in the inline text's own offsets -----------------------------


def _image(child: Token, spot: Spot, label: str) -> Iterator[Edit]:
    """An image becomes a link to the same address, behind an image icon."""
    at = child.meta["at"]
    yield Edit(at, "!", IMAGE_ICON, drop=1)
    if not child.content.strip():  # `![](url)`: a link with no text would be invisible
        yield Edit(at + 2, spot.src[at + 2], _literal(label))


def _link(child: Token, spot: Spot, label: str) -> Iterator[Edit]:
    """A link that is not http(s) or mailto is shown as text; so is one glued to a bare
    address (Streamlit's bare link would swallow its bracket and show its title as Markdown)."""
    at = child.meta["at"]
    href = str(child.attrs.get("href", "")).lower()
    if (not href.startswith(ALLOWED_LINKS) or _after_bare_link(spot.src, at)
            or _spans_block_start(spot.src, at, child.meta["end"])):
        yield Edit(at, "[", "\\")


def _code(child: Token, spot: Spot, label: str) -> Iterator[Edit]:
    """A code span glued to a bare address loses its backtick to Streamlit's bare link, which
    would show what the span hid: here the span becomes text too. So does a span running over
    a line that Streamlit could take for a math or directive block."""
    at = child.meta["at"]
    if _after_bare_link(spot.src, at) or _spans_block_start(spot.src, at, child.meta["end"]):
        yield Edit(at, "`", "\\")


def _inert(child: Token, spot: Spot, label: str) -> Iterator[Edit]:
    """Raw HTML and <autolinks> are text to Streamlit, but one running over a line that it
    could take for a math or directive block would end early there: shown as text."""
    at = child.meta.get("at")
    if at is not None and _spans_block_start(spot.src, at, child.meta["end"]):
        yield Edit(at, "<", "\\")


def _autolink_or_link(child: Token, spot: Spot, label: str) -> Iterator[Edit]:
    if child.markup == "autolink":
        href = str(child.attrs.get("href", "")).lower()
        if not href.startswith(ALLOWED_LINKS):
            yield Edit(child.meta["at"], "<", "\\")
        else:
            yield from _inert(child, spot, label)
    else:
        yield from _link(child, spot, label)


# The token rules, by token type. Each returns the edits for one token of the block's own text.
RULES: dict[str, Callable[[Token, Spot, str], Iterator[Edit]]] = {
    "image": _image,
    "link_open": _autolink_or_link,
    "code_inline": _code,
}


def _mark_edits(spot: Spot) -> Iterator[Edit]:
    """Directives, and `$` where Streamlit's math could disagree with the parser here."""
    src = spot.src
    math_end = -1
    for pos in sorted(set(spot.token.meta.get("marks", ()))):
        if src[pos] == ":":
            yield Edit(pos, ":", "\\")
            continue
        if pos < math_end or (pos and src[pos - 1] == "$" and not _escaped(src, pos - 1)):
            continue  # inside math, or not the first `$` of a run (remark-math's rule)
        run = _run(src, pos, "$")
        rest_of_line = src[pos + run:].split("\n", 1)[0]
        if run >= 2 and _line_start(src, pos) and "$" not in rest_of_line:
            # Streamlit may open display math here, which runs over block boundaries: kept
            # only when the paragraph, from this line on, is that math and nothing else.
            if _display_math(src, pos, run, spot):
                math_end = len(src)
                continue
            yield from (Edit(pos + i, "$", "\\") for i in range(run))
            continue
        close = _closing_run(src, pos + run, run)
        if close is None:
            continue  # no math: the dollars are text to both
        if any(c in src[pos + run:close] for c in "`[]<"):
            # Streamlit's math would eat the start or end of a code span, a link or HTML
            # that the parser here saw: the dollars are shown as text instead.
            yield from (Edit(pos + i, "$", "\\") for i in range(run))
            continue
        math_end = close + run


def _display_math(src: str, pos: int, run: int, spot: Spot) -> bool:
    if spot.before is None or spot.before.type != "paragraph_open":
        return False
    lines = src[pos:].split("\n")
    if len(lines) < 2:
        return False

    def closes(line: str) -> bool:
        s = line.strip(" ")
        return len(s) >= run and set(s) == {"$"}

    return closes(lines[-1]) and not any(closes(line) for line in lines[1:-1])


def _inline_edits(spot: Spot, label: str) -> Iterator[Edit]:
    for child in spot.token.children or ():
        rule = RULES.get(child.type)
        if rule is not None and "at" in child.meta:
            yield from rule(child, spot, label)
        elif child.type == "html_inline":
            yield from _inert(child, spot, label)
    yield from _mark_edits(spot)


# -- helpers of the rules ----------------------------------------------------------------------


def _line_start(src: str, pos: int) -> bool:
    """Whether only up to three spaces stand between the start of its line and `pos`."""
    start = src.rfind("\n", 0, pos) + 1
    return pos - start <= 3 and not src[start:pos].strip(" ")


def _escaped(src: str, pos: int) -> bool:
    count = 0
    while pos - count - 1 >= 0 and src[pos - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _run(src: str, pos: int, ch: str) -> int:
    end = pos
    while end < len(src) and src[end] == ch:
        end += 1
    return end - pos


def _closing_run(src: str, pos: int, run: int) -> int | None:
    """Where a run of exactly `run` dollars closes math opened before `pos` (remark-math: like
    a code span, backslashes do not escape inside)."""
    while (found := src.find("$", pos)) != -1:
        length = _run(src, found, "$")
        if length == run:
            return found
        pos = found + length
    return None


def _after_bare_link(src: str, at: int) -> bool:
    """Whether the characters glued before `at` (back to a space or line break) hold the start
    of a GFM bare link, which Streamlit would extend over `at`."""
    start = at
    while start > 0 and src[start - 1] not in " \t\n":
        start -= 1
    glued = src[start:at].lower()
    return any(prefix in glued for prefix in _BARE_LINKS)


def _spans_block_start(src: str, at: int, end: int) -> bool:
    """Whether a construct from `at` to `end` runs over a line that begins with `$$` or `::`:
    Streamlit's math or directive block could start there and cut the construct short."""
    for line in src[at:end].split("\n")[1:]:
        head = line.lstrip(" ")
        if len(line) - len(head) <= 3 and head.startswith(("$$", "::")):
            return True
    return False


def _literal(text: str) -> str:
    """Text shown as typed inside Markdown, on one line: each character that could start
    Markdown escaped, and a list marker at its start too."""
    line = " ".join(text.split()).translate(_MARKUP)
    return _LIST_START.sub(lambda m: (m.group(1) or "") + "\\" + (m.group(2) or m.group(3)),
                           line, count=1)


# -- from inline offsets to the text's offsets -------------------------------------------------


def _where(spot: Spot, text: str, starts: list[int], cursors: dict[int, int]
           ) -> Callable[[int], int] | None:
    """A function from offsets in the inline text to offsets in the whole text, or None when
    the inline text cannot be found in its lines (then nothing of it is trusted)."""
    token, src = spot.token, spot.src
    if token.map is None:
        return None
    first = token.map[0]
    if spot.before is not None and spot.before.type in ("th_open", "td_open"):
        return _cell(src, text, starts, first, cursors)
    offsets = []
    lines = src.split("\n")
    for i, line in enumerate(lines):
        row = first + i
        if row + 1 >= len(starts):
            return None
        whole = text[starts[row]:starts[row + 1]].rstrip("\n")
        if i < len(lines) - 1:
            if not whole.endswith(line):
                return None
            offsets.append(starts[row] + len(whole) - len(line))
        else:
            found = whole.rfind(line)  # a heading's closing #s may follow
            if found < 0 or whole[found + len(line):].strip(" \t#"):
                return None
            offsets.append(starts[row] + found)
    line_starts = [0]
    for line in lines[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)

    def place(pos: int) -> int:
        i = _bisect(line_starts, pos)
        return offsets[i] + pos - line_starts[i]

    return place


def _cell(src: str, text: str, starts: list[int], row: int, cursors: dict[int, int]
          ) -> Callable[[int], int] | None:
    """A table cell's text in its row: matched character by character from where the cell
    before it ended (the row's pipes, spaces and the backslash of `\\|` are skipped)."""
    if row + 1 >= len(starts):
        return None
    end = starts[row + 1]
    at = cursors.get(row, starts[row])
    placed = []
    for ch in src:
        while at < end and text[at] != ch:
            at += 1
        if at >= end:
            return None
        placed.append(at)
        at += 1
    if placed:
        cursors[row] = at
    return lambda pos: placed[pos]


def _bisect(values: list[int], x: int) -> int:
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if values[mid] <= x:
            lo = mid
        else:
            hi = mid
    return lo


# -- one pass, and the passes until nothing is left --------------------------------------------


@dataclass
class _Parsed:
    """What a parse of the text found besides edits: the lines where top-level blocks start,
    and the labels it defined (references, footnotes) with the line each is on."""

    block_starts: list[int] = field(default_factory=list)
    defs: dict[str, tuple[int, str]] = field(default_factory=dict)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    find = text.find
    while (i := find("\n", starts[-1])) != -1:
        starts.append(i + 1)
    if starts[-1] != len(text) + 1:
        starts.append(len(text) + 1)
    return starts


def _seed(defs: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """A parser env that already knows labels defined elsewhere in the text."""
    env: dict[str, Any] = {"references": {}, "footnotes": {"refs": {}, "list": {}}}
    for key, (line, href) in defs.items():
        kind, _, label = key.partition(":")
        if kind == "ref":
            env["references"][label] = {"title": "", "href": href, "map": [line, line + 1]}
        else:
            env["footnotes"]["refs"][":" + label] = -1
    return env


def _pass(text: str, defs: dict[str, tuple[int, str]], label: str
          ) -> tuple[list[Edit] | None, _Parsed]:
    """Parse once; the edits this text needs (None: positions not trusted), and what it has."""
    env = _seed(defs)
    tokens = _parser().parse(text, env)
    parsed = _Parsed()
    for key, ref in env.get("references", {}).items():
        if "ref:" + key not in defs:
            parsed.defs["ref:" + key] = (ref["map"][0], ref["href"])
    starts = _line_starts(text)
    cursors: dict[int, int] = {}
    edits: list[Edit] = []
    before: Token | None = None
    trusted = True
    for token in tokens:
        if token.map is not None and token.level == 0 and token.nesting >= 0:
            parsed.block_starts.append(token.map[0])
        if token.type == "footnote_reference_open" and token.map is not None:
            parsed.defs.setdefault("fn:" + token.meta["label"], (token.map[0], ""))
        if token.type == "inline":
            spot = Spot(token, before, token.content)
            found = list(_inline_edits(spot, label))
            if found and trusted:
                place = _where(spot, text, starts, cursors)
                if place is None:
                    trusted = False
                else:
                    edits.extend(Edit(place(e.at), e.expect, e.put, e.drop) for e in found)
        before = token
    return (edits if trusted else None), parsed


def _apply(text: str, edits: list[Edit]) -> str | None:
    """The text with the edits made, or None when one is not where it says."""
    unique = {(e.at, e.expect): e for e in edits}
    parts, end = [], len(text)
    for (at, expect), edit in sorted(unique.items(), reverse=True):
        if text[at:at + len(expect)] != expect or at + edit.drop > end:
            return None
        parts.append(text[at + edit.drop:end])
        parts.append(edit.put)
        end = at
    parts.append(text[:end])
    return "".join(reversed(parts))


def _escape_all(text: str) -> str:
    """The last resort: every ASCII punctuation mark escaped, so nothing is Markdown at all."""
    return text.translate(_PUNCTUATION)


def _safe(text: str, defs: dict[str, tuple[int, str]], label: str) -> tuple[str, _Parsed, bool]:
    """The safe text, what the first parse found, and whether the parser's word was kept
    (False: escaped whole)."""
    current, first = text, None
    for _ in range(MAX_PASSES):
        edits, parsed = _pass(current, defs, label)
        first = first or parsed
        if edits is None:
            break
        if not edits:
            return current, first, True
        applied = _apply(current, edits)
        if applied is None:
            break
        current = applied
    return _escape_all(text), first or _Parsed(), False


def normalize(text: str) -> str:
    """Line breaks as the parser counts them (and NUL as CommonMark replaces it)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached(text: str, label: str) -> str:
    return _safe(normalize(text), {}, label)[0]


def safe_markdown(text: str, image_label: str = "image") -> str:
    """Model or server text as Markdown st.markdown can draw without reaching out."""
    return _cached(text, image_label)


def literal(text: str) -> str:
    """A name, title or address shown as typed inside Markdown (no formatting, one line)."""
    return _literal(text)


# -- a growing answer --------------------------------------------------------------------------


class LiveMarkdown:
    """`safe_markdown` for one answer as it streams in, parsing only what may have changed.

    The text is split at a line L where a top-level block starts right after a blank line.
    The lines before L keep their safe form from the frame before, and only the text from L
    is parsed again, knowing the labels defined before L. That is the parse of the whole text
    because: the text only grows; blocks before a blank line and a new top-level block are
    closed, and nothing after them opens them again (a paragraph cannot continue across a
    blank line, and the new block is not indented into a list); the edits never change a
    line's block structure, so the safe lines before L end the same way. The one thing later
    text can change in earlier blocks is a label (`[x][r]` + `[r]: url`, footnotes): when a
    label defined from L on is new, gone or changed since the frame before and its text
    stands before L, the whole text is parsed again.
    """

    def __init__(self, image_label: str | None = None) -> None:
        self.label = image_label or t("render.image")
        self.source = ""  # the text of the last frame ("" once it was escaped whole)
        self.cut_line = 0  # L: the lines of `source` before L are final
        self.cut = 0  # the offset of line L in `source`
        self.head = ""  # the safe form of source[:cut]
        self.head_defs: dict[str, tuple[int, str]] = {}  # labels defined before L
        self.tail_defs: dict[str, tuple[int, str]] = {}  # labels defined from L on, last frame
        self.head_folded = ""  # the head's source, case-folded, runs of blanks as one space

    def __call__(self, text: str) -> str:
        """The safe form of the answer so far."""
        text = normalize(text)
        if self.cut and self.source and text.startswith(self.source):
            tail, parsed, kept = _safe(text[self.cut:], self.head_defs, self.label)
            tail_defs = {k: (line + self.cut_line, href)
                         for k, (line, href) in parsed.defs.items()}
            if kept and not self._uses(_changed_labels(tail_defs, self.tail_defs)):
                out = self.head + tail
                self._remember(text, tail, parsed, tail_defs)
                return out
        out, parsed, kept = _safe(text, {}, self.label)
        self.cut_line, self.cut, self.head, self.head_defs, self.head_folded = 0, 0, "", {}, ""
        if kept:
            self._remember(text, out, parsed, parsed.defs)
        else:
            self.source = ""
        return out

    def _remember(self, text: str, tail: str, parsed: _Parsed,
                  tail_defs: dict[str, tuple[int, str]]) -> None:
        """Move L forward to the last top-level block that starts after a blank line."""
        lines = text[self.cut:].split("\n")
        best = max((s for s in parsed.block_starts
                    if 0 < s < len(lines) and not lines[s - 1].strip(_BLANK)), default=0)
        self.source = text
        if best:
            self.head += "".join(line + "\n" for line in tail.split("\n")[:best])
            self.head_folded += " " + _fold("\n".join(lines[:best]))
            self.cut += sum(len(line) + 1 for line in lines[:best])
            self.cut_line += best
        self.head_defs.update({k: v for k, v in tail_defs.items() if v[0] < self.cut_line})
        self.tail_defs = {k: v for k, v in tail_defs.items() if v[0] >= self.cut_line}


    def _uses(self, labels: set[str]) -> bool:
        """Whether the lines before L could refer to one of these labels (a label is matched
        case-folded with its blanks collapsed, so its text must stand in the lines)."""
        return any(label.partition(":")[2].casefold() in self.head_folded for label in labels)


def _changed_labels(now: dict[str, tuple[int, str]], before: dict[str, tuple[int, str]]
                    ) -> set[str]:
    """Labels defined from L on that are new, gone or point elsewhere since the last frame."""
    return {k for k in now.keys() | before.keys()
            if (now.get(k) or (0, None))[1] != (before.get(k) or (0, None))[1]}


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


# -- drawing -----------------------------------------------------------------------------------


def markdown(text: str) -> str:
    """`safe_markdown` with the reader's word for an image without alt text."""
    return safe_markdown(text, t("render.image"))


def show(text: str, where: Any = None) -> Any:
    """Draw model or server text (the only way such text reaches st.markdown)."""
    return (where or st).markdown(markdown(text))
