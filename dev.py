"""The two commands a newcomer needs: `python dev.py app` and `python dev.py test`.

`python dev.py screenshots` refreshes the README images in docs/ from the browser tests.

Each makes .venv (once), installs what the requirements files ask for (again only when a
file changed), and for the tests makes sure a Chromium is there: the system's if it has one
(as root on Debian/Ubuntu the `chromium` package is installed), else Playwright's download.
Only the standard library is used here, so it runs on a fresh Python.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
SYSTEM_CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
APT_PACKAGES = ["chromium", "fonts-wqy-zenhei"]  # the browser, and CJK glyphs for screenshots


def run(*cmd: str | Path, check: bool = True, **kwargs: object) -> int:
    """Run a command, echoing it, from the repository root."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check, **kwargs).returncode


def ensure_venv(requirements: str) -> None:
    """Create .venv and install a requirements file unless it is already installed as is."""
    if not PYTHON.exists():
        run(sys.executable, "-m", "venv", VENV)
        run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    files = [ROOT / requirements, ROOT / "requirements.txt"]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / f".installed-{requirements}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    run(PYTHON, "-m", "pip", "install", "--quiet", "-r", ROOT / requirements)
    stamp.write_text(digest)


def system_chromium() -> str | None:
    """A Chromium installed by the system, if any."""
    found = [p for p in SYSTEM_CHROMIUM if Path(p).exists()]
    return found[0] if found else None


def ensure_browser() -> None:
    """Make a headless Chromium available to Playwright, or say how to get one."""
    if system_chromium():
        return
    # As root on Debian/Ubuntu (CI, containers) the distribution's package is the sure way:
    # Playwright's own download needs hosts a closed network does not reach.
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", *APT_PACKAGES, env=env)
        if system_chromium():
            return
    try:
        code = run(PYTHON, "-m", "playwright", "install", "chromium", check=False,
                   timeout=300, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        code = 1
    if code != 0:
        sys.exit("No Chromium for the browser tests: run `python -m playwright install chromium`"
                 " or install your system's chromium package, then try again.")


def app(args: list[str]) -> int:
    """Start OwnGPT in the browser (app.py: streamlit_app.py with the remember-me routes)."""
    ensure_venv("requirements.txt")
    return run(PYTHON, "-m", "streamlit", "run", "app.py", *args, check=False)


def test(args: list[str]) -> int:
    """Lint, then the whole test suite: unit, AppTest and the browser tests."""
    ensure_venv("requirements-dev.txt")
    ensure_browser()
    if run(PYTHON, "-m", "ruff", "check", ".", check=False):
        return 1
    return run(PYTHON, "-m", "pytest", *args, check=False)


README_IMAGES = ("chat.png", "chat-zh.png", "settings.png", "compare.png", "usage.png",
                 "gate.png")
ARTIFACTS = ROOT / "tests" / "artifacts"


def cjk_font() -> str | None:
    """An installed font with Chinese glyphs (fontconfig's answer), else None."""
    if not shutil.which("fc-list"):
        return None
    found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True)
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else None


def screenshots(args: list[str]) -> int:
    """Refresh the README images in docs/ from a fresh run of the browser tests."""
    if cjk_font() is None:
        sys.exit("No Chinese (CJK) font is installed, so the Chinese screenshot would show boxes:"
                 " install one (Debian/Ubuntu: fonts-wqy-zenhei), then try again.")
    ensure_venv("requirements-dev.txt")
    ensure_browser()
    started = time.time()
    if run(PYTHON, "-m", "pytest", "-q", "tests/e2e", *args, check=False):
        return 1
    fresh = [ARTIFACTS / n for n in README_IMAGES
             if (ARTIFACTS / n).exists() and (ARTIFACTS / n).stat().st_mtime >= started]
    if len(fresh) != len(README_IMAGES):
        sys.exit(f"The browser tests did not take all of {', '.join(README_IMAGES)}; docs/ is"
                 " left as it was.")
    for path in fresh:
        shutil.copyfile(path, ROOT / "docs" / path.name)
        print("updated", Path("docs") / path.name)
    return 0


def main() -> int:
    commands = {"app": app, "test": test, "screenshots": screenshots}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python dev.py app [streamlit options] | python dev.py test [pytest options]"
              " | python dev.py screenshots")
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
