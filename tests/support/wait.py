"""Waiting for a condition in tests: one helper for threads and one for coroutines, instead of
a hand-written deadline loop in each test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


Description = str | Callable[[], str]


def wait_for(check: Callable[[], T | None], timeout: float = 20.0,
             what: Description = "condition", interval: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy and return that; fail after
    ``timeout`` seconds naming ``what`` (a callable describes the state at the timeout).
    ``check`` may itself assert (a state that must never be seen while waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {_text(what)}")
        time.sleep(interval)


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0,
                     what: Description = "condition", interval: float = 0.1) -> T:
    """``wait_for`` for a coroutine check, sleeping without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {_text(what)}")
        await asyncio.sleep(interval)


def _text(what: Description) -> str:
    return what() if callable(what) else what
