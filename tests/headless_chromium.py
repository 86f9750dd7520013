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


def screenshot(page_file: Path, png: Path, height: int, profile: Path, page: str) -> None:
    """Save what a reader sees of `page_file` as `png` (kept for a person to look at) and check it is a real picture."""
    png.unlink(missing_ok=True)
    shot = chromium(f"--screenshot={png}", f"--window-size=1280,{height}", "--hide-scrollbars", page_file.as_uri(),
                    profile=profile, page=page)
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, f"{png}: {len(data)} bytes"
