"""A real headless Chromium for page tests: Debian's /usr/bin/chromium driven by Playwright (no browser download).

Tests that need it call :func:`chromium`, which skips with the reason when the browser or Playwright is
missing (``.ci/run`` installs both, so CI runs them). ``HISTO_SCREENSHOTS=<dir>`` keeps the screenshots.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@contextmanager
def launch():
    """A headless Chromium (Playwright's Browser); skips the test when there is no browser or no Playwright."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    sync_playwright = pytest.importorskip("playwright.sync_api",
                                          reason="Playwright is not installed (pip install -e '.[dev]')").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A new page of a headless Chromium at ``width`` x ``height``; skips the test when there is no browser."""
    with launch() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def screenshot_dir(tmp_path: Path, name: str) -> Path:
    """Where a test's screenshots go: ``$HISTO_SCREENSHOTS/<name>`` when set, else the test's tmp_path."""
    root = os.environ.get("HISTO_SCREENSHOTS")
    path = Path(root) / name if root else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until ``url`` answers; fail with the server's output if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


__all__ = ["chromium", "free_port", "launch", "screenshot_dir", "wait_for_http"]
