"""Headless Chromium for page tests: the DOM after scripts ran, console errors, a screenshot."""

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]
# Chromium logs every page console message (log, error, uncaught exception, failed load) as
# ...:INFO:CONSOLE:line] "text", source: url (line), with no severity to tell them apart. Our
# pages log nothing, so any console message counts as an error.
CONSOLE = re.compile(r'CONSOLE[:(]\d+\)?\] "(.*)", source: (.*)')


@dataclass(frozen=True)
class Page:
    dom: str
    console_errors: list[str]


def _run(url: str, extra: list[str]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            ["chromium", *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return proc.stdout, proc.stderr


def render(url: str, screenshot: Path, width: int = 1280, height: int = 800) -> Page:
    """Load ``url``, let its scripts run, and return the DOM and what the console said."""
    dom, log = _run(url, ["--dump-dom"])
    _run(url, [f"--screenshot={screenshot}", f"--window-size={width},{height}"])
    errors = [f"{m.group(1)} ({m.group(2)})" for m in CONSOLE.finditer(log)]
    return Page(dom=dom, console_errors=errors)
