"""The OS update reconciler: desired OS version in, a staged inactive slot and a reboot at an
allowed time out, and the outcome (committed, rolled back, refused) in the reported state.

Its journal (``STATE/os/journal.json``, on the data partition, so it outlives a slot switch)
remembers which version it rebooted into. Running that version, the update is on probation
until ``spoke health-gate`` passes in this boot (``STATE/os/health.json``), which is also what
lets systemd-bless-boot mark the entry good: then it is committed. Running the old version
means systemd-boot fell back (the new entry's tries ran out): a rollback, whose reason the
failed gate left in ``health.json``. A version that was refused for good or rolled back is not
tried again until the hub desires another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from appliance.config import OsSection
from appliance.delivery import FINAL_REFUSALS, DesiredState
from appliance.fsutil import atomic_write
from appliance.osupdate import OS_NAME, DesiredOs
from appliance.service import Notify, TaskGroupService, tell, unheard
from daemon.delivery.errors import DeliveryInterrupted, ModelRefused
from daemon.delivery.tufclient import TufClient
from daemon.osupdate.reboot import may_reboot, parse_window
from daemon.osupdate.update import fetch_and_stage

log = logging.getLogger(__name__)

Outcome = Literal["staged", "rebooting", "committed", "rolled-back", "refused", "interrupted"]


class LastUpdate(BaseModel):
    version: str
    outcome: Outcome
    reason: str
    code: str | None = None
    ts: float


class OsJournal(BaseModel):
    desired: DesiredOs | None = None
    staged: str | None = None
    booting: str | None = None  # the version we rebooted into, until the next start sees it
    last: LastUpdate | None = None
    refused: list[str] = []  # versions never tried again (refused for good or rolled back)


def running_os(os_release: Path = Path("/etc/os-release")) -> tuple[str | None, str | None]:
    """The running OS version (``IMAGE_VERSION``) and slot (the root partition's GPT label);
    (None, None) on anything but a Spoke image, where OS updates stay off."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    version = fields.get("IMAGE_VERSION") or None
    if fields.get("IMAGE_ID") != "spoke" or version is None:
        return None, None
    slot = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        source = subprocess.run(["findmnt", "-no", "SOURCE", "/"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        if source.startswith("/dev/"):
            slot = subprocess.run(["lsblk", "-no", "PARTLABEL", source], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or None
    return version, slot


def request_reboot(state_dir: Path) -> None:
    """Ask for the reboot into the staged slot. The daemon runs unprivileged (no polkit on the
    image lets it reboot), so it leaves ``STATE/os/reboot-request``, which
    ``spoke-os-reboot.path`` turns into ``systemctl reboot`` as root."""
    atomic_write(state_dir / "os" / "reboot-request", "reboot\n")


def health_failure(path: Path, since: float) -> str | None:
    """What the last failed ``spoke health-gate`` said, if it failed last and at or after
    ``since`` (the reboot into the new version: an older failure is not that version's)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads(path.read_text())
        if not data.get("ok") and float(data.get("checked_at") or 0) >= since:
            return str(data.get("reason") or "spoke-health failed")
    return None


def health_passed_since(path: Path, since: float) -> bool:
    """Did ``spoke health-gate`` pass at or after ``since`` (this boot)?"""
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads(path.read_text())
        return bool(data.get("ok")) and float(data.get("checked_at")) >= since
    return False


def boot_time() -> float:
    """When this boot began (wall clock), for telling this boot's gate from an earlier one's."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class OsUpdateService(TaskGroupService):
    name = "osupdate"

    def __init__(
        self,
        state_dir: Path,
        config: OsSection,
        emit: Callable[[str, dict[str, Any]], object],
        busy: Callable[[], tuple[bool, int]],
        running: Callable[[], tuple[str | None, str | None]] = running_os,
        reboot: Callable[[], None] | None = None,
        stage_into: dict[str, Any] | None = None,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        booted_at: Callable[[], float] = boot_time,
        on_change: Notify = unheard,
    ) -> None:
        """``busy()`` -> (a fine-tune job runs, images queued in the uplink). ``stage_into``:
        extra ``fetch_and_stage`` arguments (an ``image`` to stage into, in tests)."""
        super().__init__()
        self.state_dir = state_dir
        self.root = state_dir / "os"
        self.config = config
        self.window = parse_window(config.reboot_window)
        self.emit = emit
        self.busy = busy
        self.running = running
        self.reboot = reboot or (lambda: request_reboot(state_dir))
        self.stage_into = stage_into or {}
        self.now = now
        self.booted_at = booted_at
        self.tuf: TufClient | None = None
        self.on_change = on_change
        self._wake = asyncio.Event()
        self.version, self.slot = running()
        self.waiting: str | None = None  # why a staged version is not booted yet

    # --- the journal ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.root / "journal.json"

    def journal(self) -> OsJournal:
        try:
            return OsJournal.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return OsJournal()
        except ValidationError:
            log.error("OS journal unreadable; starting afresh", extra={"path": str(self.path)})
            return OsJournal()

    def _save(self, journal: OsJournal) -> None:
        atomic_write(self.path, journal.model_dump_json(indent=2))

    def _record(self, journal: OsJournal, version: str, outcome: Outcome, reason: str,
                code: str | None = None) -> None:
        previous = journal.last
        journal.last = LastUpdate(version=version, outcome=outcome, reason=reason, code=code,
                                  ts=time.time())
        self._save(journal)
        if previous is not None and (previous.version, previous.outcome, previous.code) == (
                version, outcome, code):
            return  # a retry that failed the same way is not news for the hub's event log
        self.emit(f"os_{outcome.replace('-', '_')}", journal.last.model_dump(mode="json"))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.settle_boot()
        self.spawn(self._loop(), "reconcile")

    async def stop(self) -> None:
        await self.cancel_tasks()

    @property
    def on_probation(self) -> bool:
        """Running the version we rebooted into, its health gate not passed yet in this boot."""
        return self.version is not None and self.journal().booting == self.version

    def settle_boot(self) -> None:
        """Settle the version we rebooted into: committed once this boot passed its health gate
        (until then it is on probation), or rolled back and why. ``start`` does it first; public
        so a test can boot a service into a slot without its reconcile loop."""
        journal = self.journal()
        target = journal.booting
        if target is None:
            return
        health = self.root / "health.json"
        if self.version == target and not health_passed_since(health, self.booted_at()):
            return  # on probation: the gate may still pass, or fail and cost this entry a try
        journal.booting = None
        journal.staged = None
        if self.version == target:
            self._record(journal, target, "committed", f"booted {target} in slot {self.slot}, "
                         "health gate passed")
            return
        rebooted_at = journal.last.ts if journal.last is not None else 0.0
        why = health_failure(health, rebooted_at) or "the new slot never completed a boot"
        journal.refused.append(target)
        self._record(journal, target, "rolled-back", f"rolled back: spoke-health failed: {why}",
                     code="rolled-back")

    def attach(self, tuf: TufClient) -> None:
        self.tuf = tuf
        self._wake.set()

    async def on_desired(self, payload: bytes) -> None:
        try:
            desired = DesiredState.model_validate_json(payload) if payload else DesiredState()
        except ValidationError:
            return  # the model reconciler logs it
        journal = self.journal()
        if journal.desired != desired.os:
            journal.desired = desired.os
            self._save(journal)
            self._wake.set()
            await self._changed()  # the hub sees the device took the new desired version

    # --- what the hub sees ----------------------------------------------------------------------

    def reported(self) -> dict[str, Any]:
        journal = self.journal()
        last = journal.last
        error = None
        if last is not None and last.code is not None:
            error = {"name": OS_NAME, "version": last.version, "code": last.code,
                     "reason": last.reason}
        return {
            "name": OS_NAME, "version": self.version, "slot": self.slot,
            "state": ("probation" if self.on_probation else "committed") if self.version
            else "not-an-image",
            "desired": journal.desired.version if journal.desired else None,
            "staged": journal.staged, "waiting": self.waiting,
            "last_update": last.model_dump(mode="json") if last else None,
            "last_error": error,
        }

    async def _changed(self) -> None:
        await tell(self.on_change)

    # --- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5 if self.on_probation else 60)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("OS reconcile failed")

    async def reconcile(self) -> None:
        """One pass: stage the desired version if it is new, then reboot if policy allows."""
        if self.version is None:
            return  # not running a Spoke image (a development box): never stage anything
        if self.on_probation:
            self.settle_boot()
            if not self.on_probation:
                await self._changed()
            return
        journal = self.journal()
        desired = journal.desired
        if desired is not None and self.tuf is not None and desired.version not in (
                self.version, journal.staged) and desired.version not in journal.refused:
            await self._stage(journal, desired)
        if journal.staged is not None and journal.booting is None:
            await self._maybe_reboot(journal)

    async def _stage(self, journal: OsJournal, desired: DesiredOs) -> None:
        assert self.tuf is not None
        deadline = time.monotonic() + self.config.download_deadline_s
        try:
            await asyncio.to_thread(fetch_and_stage, self.tuf, self.tuf.fetcher, desired,
                                    self.state_dir, deadline, **self.stage_into)
        except ModelRefused as exc:
            if exc.code in FINAL_REFUSALS:
                journal.refused.append(desired.version)
            self._record(journal, desired.version, "refused", exc.reason, code=exc.code)
        except DeliveryInterrupted as exc:
            self._record(journal, desired.version, "interrupted", exc.reason)
        else:
            journal.staged = desired.version
            self._record(journal, desired.version, "staged",
                         f"{desired.version} staged into the inactive slot")
        await self._changed()

    async def _maybe_reboot(self, journal: OsJournal) -> None:
        finetune, queued = self.busy()
        decision = may_reboot(self.now(), self.window, finetune, queued)
        if not decision.allowed:
            if self.waiting != decision.reason:
                self.waiting = decision.reason
                await self._changed()
            return
        assert journal.staged is not None
        journal.booting = journal.staged
        self.waiting = None
        self._record(journal, journal.staged, "rebooting", decision.reason)
        await self._changed()
        await asyncio.to_thread(self.reboot)
