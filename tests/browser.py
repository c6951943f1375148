"""A real headless Chromium for tests that look at a rendered page (Flower's, a job report)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium); CI installs it")


def browse(url: str) -> str:
    """The page's DOM after its scripts ran, as headless Chromium renders it."""
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=10000", "--dump-dom", url],
                          capture_output=True, timeout=60, check=True)
    return done.stdout.decode()
