"""The daemon: every service of ``spoke run``, started in order under one supervisor.

Order: watchdog, metrics and outbox, HTTP API, health, provisioning; the hub link joins once
the appliance has an identity. Stopping runs the same list backwards.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import topics
from appliance.config import DaemonConfig
from appliance.errors import LinkError
from appliance.health import AlertEvent, DaemonFacts, HealthSnapshot
from appliance.service import Service, Supervisor, TaskGroupService
from daemon import sdnotify
from daemon.api.server import ApiServer
from daemon.health import DaemonMetrics, HealthService
from daemon.hublink import HubLink
from daemon.outbox import Outbox
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
        self.metrics = DaemonMetrics()
        self.outbox = Outbox(options.state.root / "outbox.db")
        self.outbox.on_drop = lambda n: self.metrics.drop("outbox_full", n)
        self.api = ApiServer(config.api, self.metrics.exposition)
        self.health = HealthService(
            config.health, self._publish_health, metrics=self.metrics, facts=self._facts
        )
        self.hublink: HubLink | None = None

    def state_fields(self) -> dict[str, Any]:
        """Extra reported-state fields; services that own them add theirs here."""
        return {"api_port": self.api.port}

    def _facts(self) -> DaemonFacts:
        contact = self.status.data["hub"].get("last_contact")
        return DaemonFacts(
            last_hub_contact_s=contact,
            outbox_depth=self.outbox.depth(),
        )

    async def _publish_health(self, snapshot: HealthSnapshot, alerts: list[AlertEvent]) -> None:
        """Alerts go through the durable outbox first; the snapshot itself is best-effort."""
        for alert in alerts:
            self.outbox.put("alert", alert.model_dump(mode="json"))
        link = self.hublink
        if link is None:
            return
        with contextlib.suppress(LinkError):
            await link.publish(topics.health(link.ident.device_id), snapshot.model_dump_json())
            self.status.hub(True)
            self.metrics.hub_last_contact_timestamp_seconds.set(time.time())

    async def _publish_event(self, event: bytes) -> None:
        link = self.hublink
        if link is None:
            raise LinkError("not enrolled yet")
        await link.publish(topics.events(link.ident.device_id), event)

    async def _on_enrolled(self, ident: Identity) -> None:
        link = HubLink(ident, self.config.hub, self.status, self.state_fields)
        link.on_failure = self.supervisor.report_failure
        self.hublink = link
        self.outbox.attach(self._publish_event)
        link.on_connect.append(lambda: self.outbox.attach(self._publish_event))
        await self.supervisor.add(link)

    async def run(self, stop: asyncio.Event) -> int:
        self.status.write()
        async with self.supervisor as sup:
            services: list[Service] = [
                sdnotify.Watchdog(),
                self.outbox,
                self.api,
                self.health,
                Provisioner(
                    self.options.state,
                    self.config.hub,
                    self.status,
                    self.options.trust_key,
                    self.options.bundle,
                    self.options.boot_dir,
                    self._on_enrolled,
                ),
            ]
            for service in services:
                if isinstance(service, TaskGroupService):
                    service.on_failure = sup.report_failure
                await sup.add(service)
            self.status.set("api", {"port": self.api.port})
            sdnotify.notify("READY=1")
            log.info("daemon running", extra={"state_dir": str(self.options.state.root)})
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(sup.failed.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            log.info("daemon stopping")
        self.status.set("stopped", True)
        return 1 if sup.failure else 0
