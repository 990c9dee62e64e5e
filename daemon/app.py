"""The daemon: every service of ``spoke run``, started in order under one supervisor."""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import DaemonConfig
from appliance.service import Supervisor
from daemon import sdnotify
from daemon.hublink import HubLink
from daemon.provisioner import Provisioner
from daemon.state import Identity, StateDir, StatusFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    state: StateDir
    trust_key: Path
    bundle: Path | None
    boot_dir: Path


class Daemon:
    def __init__(self, options: RunOptions, config: DaemonConfig) -> None:
        self.options = options
        self.config = config
        self.status = StatusFile(options.state)
        self.supervisor = Supervisor(stop_timeout=config.daemon.stop_timeout_s)
        self.hublink: HubLink | None = None

    def state_fields(self) -> dict[str, Any]:
        """Extra reported-state fields; services that own them add theirs here."""
        return {}

    async def _on_enrolled(self, ident: Identity) -> None:
        self.hublink = HubLink(ident, self.config.hub, self.status, self.state_fields)
        self.hublink.on_failure = self.supervisor.report_failure
        await self.supervisor.add(self.hublink)

    async def run(self, stop: asyncio.Event) -> int:
        self.status.write()
        async with self.supervisor as sup:
            watchdog = sdnotify.Watchdog()
            watchdog.on_failure = sup.report_failure
            await sup.add(watchdog)
            provisioner = Provisioner(
                self.options.state,
                self.config.hub,
                self.status,
                self.options.trust_key,
                self.options.bundle,
                self.options.boot_dir,
                self._on_enrolled,
            )
            provisioner.on_failure = sup.report_failure
            await sup.add(provisioner)
            sdnotify.notify("READY=1")
            log.info("daemon running", extra={"state_dir": str(self.options.state.root)})
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(sup.failed.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            log.info("daemon stopping")
        self.status.set("stopped", True)
        return 1 if sup.failure else 0
