"""Chinese and English stay complete: every key the code uses exists in both catalogs."""

from __future__ import annotations

import re
from pathlib import Path

from core.i18n import LANGUAGES, catalog, language_from_locale, set_language, t

ROOT = Path(__file__).resolve().parents[1]
KEY_USE = re.compile(r"""(?:\bt\(|hint=|ConfigError\()\s*["']([a-z_]+\.[a-z_.]+)["']""")


def used_keys() -> set[str]:
    files = [*ROOT.glob("core/**/*.py"), *ROOT.glob("app_pages/*.py"), ROOT / "streamlit_app.py"]
    return {k for f in files for k in KEY_USE.findall(f.read_text(encoding="utf-8"))}


def test_catalogs_have_the_same_keys_and_no_empty_string():
    en, zh = catalog("en"), catalog("zh")
    assert set(en) == set(zh)
    assert all(v.strip() for v in [*en.values(), *zh.values()])


def test_every_key_in_the_code_is_in_the_catalogs():
    keys = used_keys()
    assert len(keys) > 50
    kinds = {f"error.{k}" for k in ("auth", "model_not_found", "rate_limited",
                                    "context_too_long", "connection", "timeout", "server",
                                    "bad_request", "content_filter")}
    for lang in LANGUAGES:
        assert (keys | kinds) - set(catalog(lang)) == set(), lang


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
