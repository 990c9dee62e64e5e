"""When the appliance may reboot into a staged OS version: a pure decision (DESIGN rule 4).

Only inside ``[os] reboot_window`` (local time), never while a fine-tune job runs (its hours of
work would be lost) and never while the uplink still holds unprocessed images (a drone crew is
waiting for those results). The caller asks root for the reboot (``service.request_reboot``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from appliance.errors import ConfigError


@dataclass(frozen=True)
class Window:
    start: dt.time
    end: dt.time

    def contains(self, at: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end  # wraps past midnight, e.g. 23:00-02:00

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    try:
        start, end = (dt.time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError as exc:
        raise ConfigError(f"[os] reboot_window {text!r} is not HH:MM-HH:MM") from exc
    if start == end:
        raise ConfigError(f"[os] reboot_window {text!r} is empty; give two different times")
    return Window(start, end)


@dataclass(frozen=True)
class RebootDecision:
    allowed: bool
    reason: str


def may_reboot(now: dt.datetime, window: Window, finetune_running: bool,
               uplink_queue: int) -> RebootDecision:
    """Whether a staged version may be booted now, and why not (for the reported state)."""
    if not window.contains(now.time()):
        return RebootDecision(False, f"outside the reboot window {window}")
    if finetune_running:
        return RebootDecision(False, "a fine-tune job is running")
    if uplink_queue > 0:
        return RebootDecision(False, f"the uplink queue holds {uplink_queue} images")
    return RebootDecision(True, f"inside the reboot window {window}, nothing running")
