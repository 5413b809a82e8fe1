"""One token estimator for every place that needs a count the server did not give.

Used for the row written when a request goes out, for trimming context, and for display
when a server reports no usage. It mimics how BPE tokenizers (o200k_base, used by today's
OpenAI models; Qwen/DeepSeek/Llama vocabularies are similar) split text: a common word is one
token, digits go in groups of up to three, runs of punctuation merge, and a CJK character is
most of a token. Within 15% of o200k_base on tests/data/tokens (see tests/test_tokens.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

# A word with its leading space is one token; very long words split about every 8 letters.
# CJK ideographs, kana and hangul: o200k merges frequent pairs, ~0.7 tokens a character.
_PIECES = re.compile(
    r"(?P<cjk>[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+)"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<digits>\d+)"
    r"|(?P<punct>[^\w\s]+)"  # an underscore joins the word after it: "_id" is one token
    r"|(?P<newline>\n+)"
)
CJK_PER_CHAR = 0.7
# Chat formats wrap each message in a few special tokens (role, start, end).
PER_MESSAGE = 4
PER_REPLY = 3


def estimate_tokens(text: str) -> int:
    """About how many tokens a modern BPE tokenizer makes of text (0 for empty text)."""
    if not text:
        return 0
    total = 0.0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "word":
            total += 1 + (len(piece) - 1) // 8 if piece.isascii() else len(piece) / 2
        elif kind == "cjk":
            total += CJK_PER_CHAR * len(piece)
        elif kind in ("digits", "punct"):  # digits group by three; punctuation runs merge
            total += math.ceil(len(piece) / 3)
        else:
            total += 1
    return max(1, round(total))


def estimate_messages(messages: Iterable[Any]) -> int:
    """About how many input tokens a chat request costs: each message's role and content
    plus the chat format's per-message overhead and the reply's priming."""
    total = PER_REPLY
    for message in messages:
        total += PER_MESSAGE + estimate_tokens(str(message.role))
        total += estimate_tokens(str(message.content or ""))
    return total
