"""A watchdog for the event loop: a thread that notices the loop has stopped running and logs
where it is stuck.

Everything the daemon does goes through one asyncio loop, so one blocking call on it (a lock,
a slow disk, a busy SQLite database) stops the API, the hub link and the health reports at
once, and from outside that is a silent hang (the fault suite saw one for 5 minutes). A
heartbeat task stamps the time on the loop; a plain thread reads the stamp, and when it is
older than ``stall_s`` logs ``event loop stalled`` with the loop thread's stack and the
innermost frame of every other thread (where a lock's holder shows), again every ``stall_s``
while the stall lasts, and ``event loop running again`` once it ends, with a lower bound
of its length.
systemd's WatchdogSec (``daemon/sdnotify.py``) restarts a stuck daemon; this says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from types import FrameType, TracebackType

log = logging.getLogger(__name__)


class LoopWatchdog:
    """``async with LoopWatchdog(stall_s):`` around the daemon's life, on its loop."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.interval = min(1.0, stall_s / 4)
        self._beat = time.monotonic()
        self._loop_thread = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._heart: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatchdog:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._heart = asyncio.create_task(self._heartbeat(), name="loop-watchdog")
        self._thread.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart
        await asyncio.to_thread(self._thread.join)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self.interval)

    def _watch(self) -> None:
        stalled_since: float | None = None  # the last beat before the stall being reported
        reported_at = 0.0
        while not self._done.wait(self.interval):
            beat = self._beat
            age = time.monotonic() - beat
            if stalled_since is not None and beat != stalled_since:
                log.warning("event loop running again", extra={
                    "stalled_s": round(beat - stalled_since - self.interval, 1)})
                stalled_since = None
            if age < self.stall_s or (stalled_since is not None
                                      and age - reported_at < self.stall_s):
                continue
            stalled_since, reported_at = beat, age
            log.warning("event loop stalled", extra={
                "stalled_s": round(age, 1), "stack": self.loop_stack(),
                "threads": self.other_threads()})

    def loop_stack(self) -> str:
        """Where the loop's thread is now, innermost call last."""
        frame = sys._current_frames().get(self._loop_thread)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(gone)"

    def other_threads(self) -> list[str]:
        """``name: file:line in function`` of every other thread's innermost frame."""
        names = {t.ident: t.name for t in threading.enumerate()}
        return [f"{names.get(ident, ident)}: {_where(frame)}"
                for ident, frame in sys._current_frames().items()
                if ident not in (self._loop_thread, threading.get_ident())]


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
