"""Headless Chromium for page tests: the DOM after scripts ran, console errors, a screenshot.

``render`` drives the chromium command line (--dump-dom); ``open_browser`` drives the same
system Chromium through Playwright, for pages that need clicks, reloads and timings.
"""

import contextlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- Playwright on the system Chromium (the dashboard's and the workbench's page tests) -------

CHROMIUM = "/usr/bin/chromium"
PLAYWRIGHT_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def playwright_missing() -> str | None:
    """Why the Playwright page tests cannot run here, or None when they can."""
    import importlib.util
    import os

    if importlib.util.find_spec("playwright") is None:
        return "playwright (pip, dev extra) missing"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} (Debian chromium) missing"
    return None


@dataclass
class Visit:
    """A loaded page and everything its console said; failed requests count as errors."""

    page: Any
    console_errors: list[str]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        return path


class Browser:
    """One headless Chromium with a fresh profile; ``visit`` opens a page at a viewport size."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def visit(
        self, url: str, width: int = 1366, height: int = 768, ready: str = "body[data-rendered-ms]"
    ) -> Visit:
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
        )
        page.goto(url)
        page.wait_for_selector(ready, state="attached", timeout=30_000)
        return Visit(page, errors)


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=PLAYWRIGHT_FLAGS,
            ignore_https_errors=True,
        )
        try:
            yield Browser(context)
        finally:
            context.close()
