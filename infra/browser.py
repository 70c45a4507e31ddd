"""Headless Chromium from Debian's package, for the dashboard test and screenshots."""

from __future__ import annotations

import subprocess
from pathlib import Path

from infra.exceptions import InfraError
from infra.procs import apt_install

# Without the background-networking flags Chromium tries to reach Google's hosts at every start.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
]  # fmt: skip


def ensure_chromium() -> str:
    return apt_install("chromium", "chromium")


def render(
    url: str, profile: Path, *, screenshot: Path | None = None, wait_ms: int = 15000, size: str = "1280,1150"
) -> str:
    """Load `url`, let its scripts run for `wait_ms` of virtual time; return the DOM (and save a PNG)."""
    args = [ensure_chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}",
            f"--window-size={size}"]  # fmt: skip
    if screenshot is not None:
        result = subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not screenshot.exists():
            raise InfraError(f"chromium screenshot failed: {result.stderr[-2000:]}")
    result = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise InfraError(f"chromium failed: {result.stderr[-2000:]}")
    return result.stdout
