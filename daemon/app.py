"""The daemon: every service of ``spoke run``, started in order under one supervisor.

Order: watchdog, outbox, HTTP API, health, provisioning; the hub link joins once the
appliance has an identity. Stopping runs the same list backwards. A ``restart`` command from
the hub stops everything the same way and builds it all again, in the same process.

``_build`` is where the parts are made (through ``daemon/compose.py``, as the tests make
them): each gets what it needs in its constructor, and a change a service reports reaches the
hub through ``_state_changed``; ``_on_enrolled`` builds the hub link with its topic handlers.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__, keystore, topics
from appliance.config import DaemonConfig
from appliance.errors import LinkError
from appliance.health import AlertEvent, DaemonFacts, HealthSnapshot
from appliance.payloads import EventAck
from appliance.service import Service, Supervisor
from daemon import compose, sdnotify, versions
from daemon.api.server import ApiServer, parse_listen
from daemon.api.tls import ApiTls
from daemon.delivery.service import ModelService
from daemon.finetune.jobs import ACTIVE as ACTIVE_JOBS
from daemon.finetune.jobs import JobOutcome
from daemon.finetune.review import review_upload
from daemon.health import DaemonMetrics, HealthService
from daemon.hub import remote
from daemon.hub.link import HubLink, MessageHandler
from daemon.hub.outbox import Outbox
from daemon.hub.provisioner import Provisioner
from daemon.hub.renewal import Renewed
from daemon.osupdate.service import OsUpdateService
from daemon.state import Identity, StateDir, StatusFile
from daemon.uplink.provider import ModelProvider, NoModel, StaticModel, StaticModelLoader
from daemon.web.report import install_route as install_report_route

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
        #: ``--model``: the one artifact the uplink serves (no hub model delivery).
        self.static_model = (
            StaticModel(options.model, config.uplink.backend, config.uplink.max_batch_tiles)
            if options.model is not None
            else None
        )

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
        fields["finetune"] = self.finetune.reported()
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

    def _link(self) -> HubLink:
        if self.hublink is None:
            raise LinkError("not enrolled yet")
        return self.hublink

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self._link().publish(topic, payload)

    async def _publish_event(self, event: bytes) -> None:
        link = self._link()
        await link.publish(topics.events(link.ident.device_id), event)

    async def _on_events_ack(self, message: Any) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            ack = EventAck.model_validate_json(payload)
        except ValueError as exc:
            log.warning("ignored a malformed event acknowledgement", extra={"error": str(exc)})
            return
        await self.outbox.ack(ack.ids)

    # --- remote commands ------------------------------------------------------------------

    def _commands(self, ident: Identity) -> remote.RemoteCommands:
        """The hub's commands (``cmd/{name}``), answered over the hub link."""
        commands = remote.RemoteCommands(self._publish, ident.device_id)

        async def ping(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            uptime = time.time() - self._link().started
            return {"pong": True, "version": __version__, "uptime_s": uptime}

        async def health(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            return (await self.health.collect_now()).model_dump(mode="json")

        async def restart(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            asyncio.get_running_loop().call_later(0.5, self.restart_requested.set)
            return {"restarting": True}

        async def support_bundle(args: dict[str, Any]) -> dict[str, Any]:
            remote.no_args(args)
            meta = json.loads((self.options.state.identity / "identity.json").read_text())
            files = remote.support_files(
                self.config.model_dump(mode="json"),
                self.status.data,
                meta,
                list(self.health_history),
                self._link().reported_state(),
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
        device = ident.device_id
        # Renewals reach the hub as events; an expired certificate sends the daemon back
        # through provisioning (a restart), which re-enrolls only with a valid bundle.
        on_renewed: list[Callable[[Renewed], object]] = [
            lambda r: self.outbox.put(
                "certificate_renewed",
                {"serial": r.serial, "previous_serial": r.previous_serial,
                 "not_after": r.not_after},
                event_id=f"renewed-{r.serial}",
            )
        ]
        tls = self.api.tls
        if tls is not None:  # the hub-issued server certificate, renewed alongside
            on_renewed.append(lambda r: tls.reload())
            tls.reload()
        handlers: dict[str, MessageHandler] = {
            f"{topics.ROOT}/{device}/cmd/+": self._commands(ident).on_message,
            topics.events_ack(device): self._on_events_ack,
        }
        if self.models is not None:
            handlers[topics.desired(device)] = self._on_desired
        link = HubLink(
            ident, self.config.hub, self.status, self.state_fields, self.options.state,
            handlers=handlers, on_renewed=on_renewed, on_expired=self.restart_requested.set,
            server_names=tls.server_names if tls is not None else list,
        )
        self.hublink = link
        self.outbox.attach(self._publish_event)
        if self.models is not None:
            await self._attach_models(self.models, ident)
        await self.supervisor.add(link)

    async def _state_changed(self) -> None:
        """A service's reported part changed: tell the hub, when there is a link."""
        link = self.hublink
        if link is not None:
            await link.publish_state()

    async def _review_upload(self, job_dir: Path, outcome: JobOutcome) -> dict[str, Any] | None:
        """A promoted fine-tune's review files to the hub; None before enrollment."""
        link = self.hublink
        return None if link is None else await review_upload(link.ident, job_dir, outcome)

    async def _on_desired(self, message: Any) -> None:
        """The hub's desired state: a hint for the models and the OS update."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if self.models is not None:
            await self.models.on_desired(payload)
        if self.osupdate is not None:
            await self.osupdate.on_desired(payload)

    async def _attach_models(self, models: ModelService, ident: Identity) -> None:
        """Models from the URL the bundle named (by default the hub's HTTPS port), trusted
        from the bundle's pinned root."""
        from daemon.delivery.fetch import repository_source
        from daemon.delivery.service import pinned_root

        root = pinned_root(models.store, self.options.state.bundle, self.options.trust_key)
        if root is None:
            await models.no_trust_root()
            return
        url, fetcher = repository_source(
            f"https://{ident.hub_host}:{ident.http_port}/repository", ident.ca,
            (ident.cert, ident.key), ident.repository_url, self.config.models.read_timeout_s,
        )
        models.attach(root, url, fetcher)
        if self.osupdate is not None and models.tuf is not None:
            self.osupdate.attach(models.tuf)  # one trust root and TUF cache: models and the OS

    # --- lifecycle ------------------------------------------------------------------------

    def _build(self) -> list[Service]:
        self.supervisor = Supervisor(stop_timeout=self.config.daemon.stop_timeout_s)
        self.outbox = Outbox(self.options.state.root / "outbox.db",
                             on_drop=lambda n: self.metrics.drop("outbox_full", n))
        # Spoke, OS and kernel versions: reported in the state, each change told once (hub history).
        self.versions = versions.current()
        update = versions.changed_since_last_start(self.options.state.root / "versions.json",
                                                   self.versions)
        if update:
            self.outbox.put("software_updated", update)
        root = self.options.state.root
        #: Where the uplink takes its model from (see daemon/uplink/provider.py): the fixed
        #: ``--model``, else the model manager of signed delivery (daemon/delivery).
        self.models: ModelService | None = None
        self.model_provider: ModelProvider = self.static_model or NoModel()
        if self.static_model is None and not self.options.standalone:
            self.models = compose.models(root / "models", self.config.models, self.outbox.put,
                                         on_change=self._state_changed,
                                         on_activate=self._model_loaded)
            self.model_provider = self.models.manager
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
        app = self.api.app
        uplink_api = compose.uplink(app, root / "uplink", self.config.uplink, self.model_provider,
                                    self.config.api.max_upload_bytes, self.metrics, self.outbox)
        self.uplink = uplink_api.service
        install_report_route(app, uplink_api, lambda: self.status.data.get("device_id"))
        # Local fine-tuning (daemon/finetune): samples, jobs, promotion through self.models.
        self.finetune = compose.finetune(
            app, root / "finetune", self.config.finetune, self.model_provider, self.outbox.put,
            self.uplink.tokens.verify, self._uplink_image, models=self.models,
            device_key=lambda: self.keys.tls_path(self.options.state.identity),
            on_change=self._state_changed, upload=self._review_upload,
        )
        # The engineer's workbench on /workbench (daemon/web/workbench): signed-in only.
        self.workbench = compose.workbench_view(self.uplink, self.finetune)
        self.workbench.install(app)
        if self.config.api.status_page:  # the read-only page on / (daemon/web/status.py)
            from daemon.web.status import StatusPage

            tls = self.api.tls
            StatusPage(compose.status_view(
                lambda: self.status.data, self.uplink, self.health, self.model_provider,
                self.models, tls.cert_file if tls else lambda: None)).install(app)
        # Over-the-air OS updates (daemon/osupdate), with the models' TUF client.
        self.osupdate = None if self.models is None else OsUpdateService(
            root, self.config.os, self.outbox.put,
            busy=lambda: ((self.finetune.reported() or {}).get("status") in ACTIVE_JOBS,
                          self.uplink.queue_depth()),
            on_change=self._state_changed,
        )
        services: list[Service] = [sdnotify.Watchdog(), self.outbox]
        if self.static_model is not None:
            # Before the uplink, so it stops after it: no image runs on a closed backend.
            services.append(StaticModelLoader(self.static_model, self._model_loaded))
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
        self.finetune.model_changed(model)

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
