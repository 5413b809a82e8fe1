"""The test harness and dev tools themselves: nothing from the developer's machine leaks in."""

from __future__ import annotations

import subprocess

import pytest

import dev
from core.config import PRESETS, Preset
from tests.conftest import config_vars
from tests.e2e.conftest import ROOT, screenshot


def test_a_new_preset_key_is_cleared_for_the_tests(monkeypatch):
    monkeypatch.setitem(PRESETS, "newvendor", Preset(
        "newvendor", "New vendor", "openai", "https://api.new.example/v1", "NEWVENDOR_API_KEY"))
    assert "NEWVENDOR_API_KEY" in config_vars()
    assert {p.key_env for p in PRESETS.values() if p.key_env} <= set(config_vars())


def test_e2e_screenshots_go_to_an_ignored_folder_never_over_docs():
    class Page:
        def screenshot(self, path: str) -> None:
            self.path = path

    page = Page()
    path = screenshot(page, "probe.png")
    assert page.path == str(path) and ROOT / "docs" not in path.parents
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
    assert ignored.returncode == 0, f"{path} is not ignored by git"


def test_screenshots_refuse_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(dev, "cjk_font", lambda: None)
    before = {p: p.stat().st_mtime for p in (ROOT / "docs").glob("*.png")}
    with pytest.raises(SystemExit, match="No Chinese"):
        dev.screenshots([])
    assert before == {p: p.stat().st_mtime for p in (ROOT / "docs").glob("*.png")}
