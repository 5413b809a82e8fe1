"""Chinese and English stay complete: every key the code uses exists in both catalogs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from core.i18n import LANGUAGES, catalog, language_from_locale, set_language, t
from core.providers.base import ErrorKind
from core.ui.errors import KINDS

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
# Keys the code builds from a value, e.g. t(f"source.{endpoint.source}"): each prefix and the
# values it can take. A new built key fails the test below until its values are listed here.
BUILT = {
    "error.": tuple(kind.value for kind in ErrorKind),
    "error.what.": KINDS,  # core.ui.errors.neutral: a blind pane's failure in neutral words
    "source.": ("env", "secrets", "session", "auto"),  # Endpoint.source
    "db.": ("unwritable", "bad_url", "unreachable"),  # store.problem()
    "compare.refused.": ("already_voted", "all_failed", "still_running", "winner_failed",
                         "no_prompt", "pane_count", "empty_pool", "choose_models",
                         "not_found", "bad_outcome"),  # compare.CompareError.reason
    "usage.preset_": ("today", "7d", "month", "30d", "all", "custom"),  # date range presets
}


def code_files() -> list[Path]:
    return [*ROOT.glob("core/**/*.py"), *ROOT.glob("app_pages/*.py"), ROOT / "streamlit_app.py"]


def keys_in(source: str, namespaces: set[str]) -> tuple[set[str], set[str]]:
    """Catalog keys a module uses, and the prefixes of the keys it builds with an f-string.

    A key is the first argument of t(), or any string in the code that looks like one of the
    catalog's namespaces ("error.auth" in a tuple, a dict, a hint= argument...).
    """
    keys: set[str] = set()
    built: set[str] = set()
    tree = ast.parse(source)
    # The literal pieces of an f-string are prefixes, not keys ("usage.preset_" in f"...{p}").
    pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "t" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                keys.add(first.value)
            elif isinstance(first, ast.JoinedStr):  # t(f"..."), whatever its namespace
                head = first.values[0] if first.values else None
                built.add(head.value if isinstance(head, ast.Constant) else "")
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in pieces and KEY.fullmatch(node.value)
                and node.value.split(".")[0] in namespaces):
            keys.add(node.value)
        if isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if (isinstance(head, ast.Constant) and isinstance(head.value, str)
                    and re.fullmatch(r"[a-z_]+\.[a-z_.]*", head.value)
                    and head.value[:-1] in namespaces):
                built.add(head.value)
    return keys, built


def used_keys() -> tuple[set[str], set[str]]:
    namespaces = {k.split(".")[0] for k in catalog("en")}
    keys: set[str] = set()
    built: set[str] = set()
    for file in code_files():
        found, prefixes = keys_in(file.read_text(encoding="utf-8"), namespaces)
        keys |= found
        built |= prefixes
    return keys, built


def test_catalogs_have_the_same_keys_and_no_empty_string():
    en, zh = catalog("en"), catalog("zh")
    assert set(en) == set(zh)
    assert all(v.strip() for v in [*en.values(), *zh.values()])


def test_the_key_finder_sees_tuples_dicts_hints_and_built_names():
    source = (
        'LABELS = ("chat.one", "chat.two")\n'
        'ERR = {"auth": "error.auth"}\n'
        'raise ProviderError("x", hint="error.unexpected")\n'
        'st.write(t("meta.free"), t(f"source.{e.source}"), t(f"status.{s}"))\n'
        'open("app_pages/chat.py"); key = "chat_model"; hint = f"error.{kind}"\n'
    )
    keys, built = keys_in(source, {"chat", "error", "meta", "source"})
    assert keys == {"chat.one", "chat.two", "error.auth", "error.unexpected", "meta.free"}
    assert built == {"source.", "status.", "error."}


def test_every_key_in_the_code_is_in_the_catalogs():
    keys, built = used_keys()
    assert len(keys) > 50
    assert built - set(BUILT) == set(), "list the values of these built keys in BUILT"
    keys |= {prefix + value for prefix in built for value in BUILT[prefix]}
    for lang in LANGUAGES:
        assert keys - set(catalog(lang)) == set(), lang


def test_placeholders_match_between_languages():
    fields = re.compile(r"{(\w+)}")
    en, zh = catalog("en"), catalog("zh")
    for key in en:
        assert set(fields.findall(en[key])) == set(fields.findall(zh[key])), key


def test_language_follows_the_browser_and_fills_placeholders():
    assert language_from_locale("zh-CN") == "zh" and language_from_locale("en-GB") == "en"
    assert language_from_locale(None) == "en"
    set_language("zh")
    assert t("settings.pull_done", model="qwen3") == "qwen3 已就绪。"
    set_language("en")
    assert t("error.timeout").startswith("“?” took too long")  # a missing value, not a crash
