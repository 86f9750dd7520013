"""Headless Chromium for the tests that check a page as a reader sees it (the auditor's report, the GX
Data Docs page): Debian's `chromium`, started as the machine notes require (no sandbox as root, no
background networking on a closed network, a fresh profile)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


def chromium(*args: str, profile: Path, page: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with `args`; a missing browser fails the test (never skips it)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install it (`apt-get install -y chromium`; `./dev.sh test` does) to "
                    f"check {page} as a reader sees it")
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)
