"""The daemon: every service of ``spoke run``, started in order under one supervisor.

Order: watchdog, outbox, HTTP API, health, provisioning; the hub link joins once the
appliance has an identity. Stopping runs the same list backwards. A ``restart`` command from
the hub stops everything the same way and builds it all again, in the same process.
"""

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__, keystore, topics
from appliance.config import DaemonConfig
from appliance.errors import LinkError
from appliance.health import AlertEvent, DaemonFacts, HealthSnapshot
from appliance.payloads import EventAck
from appliance.service import Service, Supervisor, TaskGroupService
from daemon import remote, sdnotify, versions
from daemon.api.server import ApiServer, parse_listen
from daemon.api.tls import ApiTls
from daemon.delivery.service import ModelService
from daemon.finetune.api import FinetuneApi
from daemon.finetune.jobs import ACTIVE as ACTIVE_JOBS
from daemon.finetune.review import review_upload
from daemon.finetune.service import FinetuneService
from daemon.health import DaemonMetrics, HealthService
from daemon.hublink import HubLink
from daemon.osupdate.service import OsUpdateService
from daemon.outbox import Outbox
from daemon.provisioner import Provisioner
from daemon.state import Identity, StateDir, StatusFile
from daemon.uplink.api import UplinkApi
from daemon.uplink.provider import ModelProvider, NoModel, StaticModel, StaticModelLoader
from daemon.uplink.service import UplinkService
from daemon.web.report import install_route as install_report_route
from daemon.web.workbench import Workbench

log = logging.getLogger(__name__)

HEALTH_HISTORY = 60


@dataclass(frozen=True)
class RunOptions:
    state: StateDir
    trust_key: Path
    bundle: Path | None
    boot_dir: Path
    #: ``--model DIR``: serve this artifact on the uplink (no hub model delivery needed).
    model: Path | None = None
    #: ``--standalone``: no provisioning and no hub link, just the API (air-gapped sites).
    standalone: bool = False


class Daemon:
    def __init__(self, options: RunOptions, config: DaemonConfig) -> None:
        self.options = options
        self.config = config
        self.status = StatusFile(options.state)
        # How device keys are kept: sealed by the TPM where the box has one (docs/IDENTITY.md).
        self.keys = keystore.choose(config.hub.key_store, config.hub.tpm_device)
        self.metrics = DaemonMetrics()
        self.health_history: deque[dict[str, Any]] = deque(maxlen=HEALTH_HISTORY)
        self.restart_requested = asyncio.Event()
        self.hublink: HubLink | None = None
        #: Where the uplink takes its model from (see daemon/uplink/provider.py): a fixed one
        #: with ``--model``; the model manager replaces ``NoModel`` when it runs.
        self.model_provider: ModelProvider = (
            StaticModel(options.model, config.uplink.backend, config.uplink.max_batch_tiles)
            if options.model is not None
            else NoModel()
        )
        #: Signed model delivery (daemon/delivery): its manager is the uplink's provider.
        self.models: ModelService | None = None
        self.osupdate: OsUpdateService | None = None
        if options.model is None and not options.standalone:
            self.models = ModelService(
                options.state.root / "models",
                config.models,
                lambda kind, data: self.outbox.put(kind, data),
            )
            self.models.manager.on_activate.append(self._model_loaded)
            self.model_provider = self.models.manager

    # --- what the services share ----------------------------------------------------------

    def state_fields(self) -> dict[str, Any]:
        """Extra reported-state fields; services that own them add theirs here."""
        fields: dict[str, Any] = {
            "api_port": self.api.port,
            # What runs now (not "os": that is the OS update's state, shaped like "model").
            "system": {"os": self.versions.os, "kernel": self.versions.kernel},
        }
        if self.models is not None:
            fields["model"] = self.models.reported()
        if self.osupdate is not None:
            fields["os"] = self.osupdate.reported()  # shaped like "model" (placement reads it)
        finetune = getattr(self, "finetune", None)
        if finetune is not None:
            fields["finetune"] = finetune.reported()
        return fields

    def _facts(self) -> DaemonFacts:
        return DaemonFacts(
            last_hub_contact_s=self.status.data["hub"].get("last_contact"),
            outbox_depth=self.outbox.depth(),
            active_model=self._active_model(),
            queue_depths={"uplink": self.uplink.queue_depth()},
        )

    def _active_model(self) -> Any:
        from appliance.health import ActiveModel

        current = self.model_provider.current()
        return ActiveModel(name=current.name, version=current.version) if current else None

    async def _publish_health(self, snapshot: HealthSnapshot, alerts: list[AlertEvent]) -> None:
        """Alerts go through the durable outbox first; the snapshot itself is best-effort."""
        for alert in alerts:
            self.outbox.put("alert", alert.model_dump(mode="json"))
        self.health_history.append(snapshot.model_dump(mode="json"))
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

    async def _on_events_ack(self, message: Any) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            ack = EventAck.model_validate_json(payload)
        except ValueError as exc:
            log.warning("ignored a malformed event acknowledgement", extra={"error": str(exc)})
            return
        self.outbox.ack(ack.ids)

    # --- remote commands ------------------------------------------------------------------

    def _commands(self, link: HubLink) -> remote.RemoteCommands:
        commands = remote.RemoteCommands(link.publish, link.ident.device_id)

        async def ping(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            return {"pong": True, "version": __version__, "uptime_s": time.time() - link.started}

        async def health(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            return (await self.health.collect_now()).model_dump(mode="json")

        async def restart(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            asyncio.get_running_loop().call_later(0.5, self.restart_requested.set)
            return {"restarting": True}

        async def support_bundle(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            ident = link.ident
            meta = json.loads((self.options.state.identity / "identity.json").read_text())
            files = remote.support_files(
                self.config.model_dump(mode="json"),
                self.status.data,
                meta,
                list(self.health_history),
                link.reported_state(),
            )
            url = (
                f"https://{ident.hub_host}:{ident.http_port}"
                f"/v1/devices/{ident.device_id}/support-bundles"
            )
            return await remote.upload_support_bundle(
                url, remote.tls_for(ident), remote.tarball(files)
            )

        async def finetune(args: dict[str, Any]) -> dict[str, Any]:
            # Same job as POST /v1/finetune; progress and outcome come back as events.
            job = await self.finetune.start_job(dict(args), source="hub")
            return {"job": job["id"], "status": job["status"], "plan": job["progress"]}

        commands.handlers.update(
            {"ping": ping, "health": health, "restart": restart, "support-bundle": support_bundle,
             "finetune": finetune}
        )
        return commands

    async def _on_enrolled(self, ident: Identity) -> None:
        link = HubLink(
            ident, self.config.hub, self.status, self.state_fields, self.options.state
        )
        link.on_failure = self.supervisor.report_failure
        # Renewals reach the hub as events; an expired certificate sends the daemon back
        # through provisioning (a restart), which re-enrolls only with a valid bundle.
        link.on_renewed.append(
            lambda r: self.outbox.put(
                "certificate_renewed",
                {"serial": r.serial, "previous_serial": r.previous_serial,
                 "not_after": r.not_after},
                event_id=f"renewed-{r.serial}",
            )
        )
        link.on_expired = self.restart_requested.set
        tls = self.api.tls
        if tls is not None:  # the hub-issued server certificate, renewed alongside
            link.server_names = tls.server_names
            link.on_renewed.append(lambda r: tls.reload())
            tls.reload()
        link.handlers[f"{topics.ROOT}/{ident.device_id}/cmd/+"] = self._commands(link).on_message
        self.hublink = link
        link.handlers[topics.events_ack(ident.device_id)] = self._on_events_ack
        self.outbox.attach(self._publish_event)
        if self.models is not None:
            self._attach_models(self.models, link)
        self.finetune.on_change = [link.publish_state]
        self.finetune.upload = functools.partial(review_upload, ident)
        await self.supervisor.add(link)

    def _attach_models(self, models: ModelService, link: HubLink) -> None:
        """Desired-state hints from the hub; models from the URL the bundle named (by default the
        hub's HTTPS port)."""
        from daemon.delivery.fetch import repository_source
        from daemon.delivery.service import pinned_root

        ident = link.ident

        async def on_desired(message: Any) -> None:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await models.on_desired(payload)
            if self.osupdate is not None:
                await self.osupdate.on_desired(payload)

        link.handlers[topics.desired(ident.device_id)] = on_desired
        models.on_change = [link.publish_state]
        root = pinned_root(models.store, self.options.state.bundle, self.options.trust_key)
        if root is None:
            models.no_trust_root()
            return
        url, fetcher = repository_source(
            f"https://{ident.hub_host}:{ident.http_port}/repository", ident.ca,
            (ident.cert, ident.key), ident.repository_url, self.config.models.read_timeout_s,
        )
        models.attach(root, url, fetcher)
        if self.osupdate is not None and models.tuf is not None:
            self.osupdate.on_change = [link.publish_state]
            self.osupdate.attach(models.tuf)  # one trust root and TUF cache: models and the OS

    # --- lifecycle ------------------------------------------------------------------------

    def _build(self) -> list[Service]:
        self.supervisor = Supervisor(stop_timeout=self.config.daemon.stop_timeout_s)
        self.outbox = Outbox(self.options.state.root / "outbox.db")
        self.outbox.on_drop = lambda n: self.metrics.drop("outbox_full", n)
        # Spoke, OS and kernel versions: reported in the state, each change told once (hub history).
        self.versions = versions.current()
        update = versions.changed_since_last_start(self.options.state.root / "versions.json",
                                                   self.versions)
        if update:
            self.outbox.put("software_updated", update)
        self.api = ApiServer(
            self.config.api,
            self.metrics.exposition,
            ApiTls(
                self.config.api, self.options.state, parse_listen(self.config.api.listen)[0],
                self.keys,
            ),
        )
        self.health = HealthService(
            self.config.health, self._publish_health, metrics=self.metrics, facts=self._facts,
            alerts_path=self.options.state.root / "alerts.json",
        )
        self.hublink = None
        self.uplink = UplinkService(
            self.options.state.root / "uplink",
            self.config.uplink,
            self.model_provider,
            self.config.api.max_upload_bytes,
            self.metrics,
            self.outbox,
        )
        uplink_api = UplinkApi(self.uplink, self.config.api.max_upload_bytes)
        uplink_api.install(self.api.app)
        install_report_route(self.api.app, uplink_api, lambda: self.status.data.get("device_id"))
        # Local fine-tuning (daemon/finetune): samples, jobs, promotion through self.models.
        self.finetune = FinetuneService(
            self.options.state.root / "finetune",
            self.config.finetune,
            self.model_provider,
            lambda kind, data: self.outbox.put(kind, data),
            models=self.models,
            device_key=lambda: self.keys.tls_path(self.options.state.identity),
        )
        FinetuneApi(self.finetune, self.uplink.tokens.verify, self._uplink_image).install(
            self.api.app
        )
        # The engineer's workbench on /workbench (daemon/web/workbench): signed-in only.
        self.workbench = Workbench.of_daemon(self)
        self.workbench.install(self.api.app)
        if self.config.api.status_page:  # the read-only page on / (daemon/web/status.py)
            from daemon.web.status import Sources, StatusPage

            StatusPage(Sources.of_daemon(self)).install(self.api.app)
        # Over-the-air OS updates (daemon/osupdate), with the models' TUF client.
        self.osupdate = None if self.models is None else OsUpdateService(
            self.options.state.root, self.config.os,
            lambda kind, data: self.outbox.put(kind, data),
            busy=lambda: ((self.finetune.reported() or {}).get("status") in ACTIVE_JOBS,
                          self.uplink.queue_depth()),
        )
        services: list[Service] = [sdnotify.Watchdog(), self.outbox]
        if isinstance(self.model_provider, StaticModel):
            # Before the uplink, so it stops after it: no image runs on a closed backend.
            services.append(StaticModelLoader(self.model_provider, self._model_loaded))
        if self.models is not None:
            services.append(self.models)  # before the uplink, so it stops after it
        services += [self.uplink, self.finetune, self.api, self.health]
        if self.osupdate is not None:
            services.append(self.osupdate)
        if self.options.standalone:
            self.status.provisioning("standalone", "started with --standalone: no hub")
            return services
        services.append(
            Provisioner(
                self.options.state,
                self.config.hub,
                self.keys,
                self.status,
                self.options.trust_key,
                self.options.bundle,
                self.options.boot_dir,
                self._on_enrolled,
                self.api.tls.server_names if self.api.tls else list,
            )
        )
        return services

    def _model_loaded(self, model: Any) -> None:
        from appliance.health import ActiveModel

        with contextlib.suppress(Exception):
            self.metrics.set_active_model(ActiveModel(name=model.name, version=model.version))
        finetune = getattr(self, "finetune", None)
        if finetune is not None:
            finetune.model_changed(model)

    async def _uplink_image(self, image_id: str) -> bytes | None:
        """An uploaded drone image's bytes (a sample may be a tile of one), or None."""
        row = await self.uplink.query("get", image_id)
        return None if row is None else await self.uplink.query("read_image", row)

    async def _run_once(self, stop: asyncio.Event) -> tuple[int, bool]:
        """Run every service until stop, failure or restart; True if a restart was asked."""
        services = self._build()
        self.restart_requested.clear()
        async with self.supervisor as sup:
            for service in services:
                if isinstance(service, TaskGroupService):
                    service.on_failure = sup.report_failure
                await sup.add(service)
            self.status.set("api", {"port": self.api.port})
            sdnotify.notify("READY=1")
            log.info("daemon running", extra={"state_dir": str(self.options.state.root)})
            waiters = [
                asyncio.create_task(e.wait()) for e in (stop, sup.failed, self.restart_requested)
            ]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            restarting = self.restart_requested.is_set() and not stop.is_set()
            if restarting:
                sdnotify.notify("RELOADING=1")
            log.info("daemon restarting" if restarting else "daemon stopping")
        return (1 if sup.failure else 0), restarting and not sup.failure

    async def run(self, stop: asyncio.Event) -> int:
        self.status.write()
        while True:
            code, restart = await self._run_once(stop)
            if not restart:
                self.status.set("stopped", True)
                return code
