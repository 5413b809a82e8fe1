"""t("key") and the Chinese and English catalogs in core/locales/."""

from __future__ import annotations

import contextvars
import functools
import json
from pathlib import Path

LANGUAGES = {"en": "English", "zh": "中文"}
DEFAULT = "en"
_LOCALES = Path(__file__).parent / "locales"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("language", default=DEFAULT)


@functools.cache
def catalog(lang: str) -> dict[str, str]:
    """All strings of one language, read once."""
    return json.loads((_LOCALES / f"{lang}.json").read_text(encoding="utf-8"))


def language_from_locale(locale: str | None) -> str:
    """The UI language for a browser locale such as "zh-CN" or "en-US"."""
    return "zh" if (locale or "").lower().startswith("zh") else DEFAULT


def set_language(lang: str) -> None:
    """Use this language for t() in the current script run."""
    _current.set(lang if lang in LANGUAGES else DEFAULT)


def t(key: str, **values: object) -> str:
    """The string for key in the current language, with {placeholders} filled.

    A key missing from the catalog shows as itself, so a gap is visible, never a crash.
    """
    text = catalog(_current.get()).get(key) or catalog(DEFAULT).get(key) or key
    try:
        return text.format_map(_Missing(values))
    except (IndexError, ValueError):
        return text


class _Missing(dict[str, object]):
    """Placeholders nobody filled show as "?" rather than failing the page."""

    def __missing__(self, key: str) -> str:
        return "?"
