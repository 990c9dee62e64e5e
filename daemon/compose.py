"""How the daemon's parts are built and wired: each service gets what it needs in its
constructor, and its routes are installed on the API next to it.

``daemon.app.Daemon`` builds ``spoke run`` from these, and the test fixtures build the same
parts from them (tests/delivery/conftest.py, tests/uplink/conftest.py,
tests/finetune/conftest.py), so a test serves what the daemon serves. The pages get read-only
views (``status_view``, ``workbench_view``), never the daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.config import FinetuneSection, ModelsSection, UplinkSection
from appliance.service import Notify, unheard
from daemon.delivery.manager import OnActivate
from daemon.delivery.service import Emit as ModelEmit
from daemon.delivery.service import ModelService, Prepare, prepare_model
from daemon.finetune.api import FinetuneApi
from daemon.finetune.service import Emit, FinetuneService, ReviewUpload
from daemon.health import DaemonMetrics, HealthService
from daemon.hub.outbox import Outbox
from daemon.uplink.api import UplinkApi
from daemon.uplink.provider import ModelProvider
from daemon.uplink.service import UplinkService
from daemon.web.status import QueueView, Sources
from daemon.web.workbench import Workbench
from daemon.web.workbench.handlers import WorkbenchSources

Verify = Callable[[str], str | None]


def models(root: Path, config: ModelsSection, emit: ModelEmit, *, on_change: Notify = unheard,
           on_activate: OnActivate | None = None, prepare: Prepare = prepare_model
           ) -> ModelService:
    """Signed model delivery (``daemon/delivery``) into ``root``: events go to ``emit`` (the
    outbox), ``on_change`` hears each reported change, ``on_activate`` each model swapped in.
    ``prepare`` loads a verified artifact (tests pass one that fails on purpose)."""
    return ModelService(root, config, emit, prepare=prepare, on_change=on_change,
                        on_activate=on_activate)


def uplink(app: web.Application, root: Path, config: UplinkSection, provider: ModelProvider,
           max_upload: int, metrics: DaemonMetrics | None = None, outbox: Outbox | None = None
           ) -> UplinkApi:
    """The drone uplink (``daemon/uplink``) and its ``/v1/images`` routes on ``app``."""
    service = UplinkService(root, config, provider, max_upload, metrics, outbox)
    api = UplinkApi(service, max_upload)
    api.install(app)
    return api


def finetune(app: web.Application, root: Path, config: FinetuneSection,
             provider: ModelProvider, emit: Emit, verify: Verify,
             uplink_image: Callable[[str], Awaitable[bytes | None]] | None = None, *,
             models: ModelService | None = None, device_key: Callable[[], Path] | None = None,
             on_change: Notify = unheard, upload: ReviewUpload | None = None
             ) -> FinetuneService:
    """Local fine-tuning (``daemon/finetune``) and its ``/v1/samples`` and ``/v1/finetune``
    routes on ``app``; promotion goes through ``models`` when the daemon has a model store."""
    service = FinetuneService(root, config, provider, emit, models=models,
                              device_key=device_key, on_change=on_change, upload=upload)
    FinetuneApi(service, verify, uplink_image).install(app)
    return service


def status_view(status: Callable[[], dict[str, Any]], uplink: UplinkService,
                health: HealthService, provider: ModelProvider, models: ModelService | None,
                tls_cert: Callable[[], str | None]) -> Sources:
    """What the status page on ``/`` reads: callables that return values, not the services."""

    def model() -> dict[str, Any] | None:
        current = provider.current()
        info: dict[str, Any] = {}
        if models is not None:
            info.update(models.reported())
        if current is not None:
            info.update(name=current.name, version=current.version)
            backend = getattr(current, "backend", None)
            if backend is not None:
                info["backend"] = getattr(backend, "name", None)
        return info or None

    def queue() -> QueueView:
        return QueueView(uplink.queue_depth(), uplink.config.queue_depth, uplink.ready())

    return Sources(status=status, uplink_root=uplink.root, health=lambda: health.latest,
                   alerts=lambda: health.alerts.active, queue=queue, model=model,
                   tls_cert=tls_cert, verify_token=uplink.tokens.verify)


def workbench_view(uplink: UplinkService, finetune: FinetuneService | None) -> Workbench:
    """The engineer's workbench on ``/workbench``: the uplink's tokens and results, the jobs."""
    return Workbench(WorkbenchSources(uplink.tokens.verify, uplink.root, finetune))
