"""The hub's HTTPS server on its HTTP port: fleet API, dashboard, metrics, uploads.

Parts of the hub add their routes to ``HubWeb.app`` before it starts. TLS uses the broker's
server certificate (issued by the hub CA that every appliance already trusts from its bundle).
Who may use which route is decided in ``provisioning.auth``: operators (token or session) for
the dashboard, API and metrics; an enrolled device's certificate or an operator for the model
repository; the device's own certificate for its uploads.
"""

import logging
import ssl
import time
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from appliance import topics
from appliance.config import HubConfig
from appliance.fsutil import atomic_write
from appliance.httpserve import listen
from provisioning import auth, metrics, repo_http
from provisioning.auth import peer_common_name
from provisioning.fleet_api import FleetApi
from provisioning.home import HubHome
from provisioning.registry import Registry

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_SUPPORT_BUNDLE_BYTES = 32 * 1024 * 1024


class HubWeb:
    name = "web"

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        self.home = home
        self.config = config
        self.registry = registry
        self.app = web.Application(client_max_size=MAX_SUPPORT_BUNDLE_BYTES + 1)
        auth.install(self.app, registry)
        r = self.app.router
        r.add_get("/healthz", self._healthz)
        r.add_static("/static/", STATIC)
        # The signed model repository (TUF metadata and hash-named targets).
        repo_http.install(self.app, home.repository, config.repository)
        FleetApi(home, config, registry).install(self.app)  # the dashboard and /api/v1
        r.add_get("/metrics", self._metrics)
        r.add_post("/v1/devices/{device}/support-bundles",
                   self._device_upload("support", "support bundle"))
        r.add_post("/v1/devices/{device}/finetune-reviews",
                   self._device_upload("finetune-reviews", "fine-tune review"))
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition(self.registry))
        response.headers["Content-Type"] = metrics.CONTENT_TYPE
        return response

    def _device_upload(self, folder: str, what: str) -> Handler:
        """A device's upload over mutual TLS: support bundles (``restart``'s sibling command
        ``support-bundle``) and a promoted fine-tune's review files (head or adapter weights,
        card, held-out comparison; daemon/finetune), when the site's policy uploads them. Kept
        as ``H/<folder>/DEVICE/<time>.tar.gz``, only from the device its certificate names."""

        async def handle(request: web.Request) -> web.Response:
            device_id = request.match_info["device"]
            if not topics.valid_id(device_id) or peer_common_name(request) != device_id:
                raise web.HTTPForbidden(text="a device may upload only with its own certificate")
            device = self.registry.device(device_id)
            if device is None or device.revoked_at is not None:
                raise web.HTTPForbidden(text="unknown or revoked device")
            data = await request.read()
            if not data:
                raise web.HTTPBadRequest(text=f"empty {what}")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            path = self.home.root / folder / device_id / f"{stamp}.tar.gz"
            atomic_write(path, data, mode=0o600)
            log.info("device upload stored",
                     extra={"device": device_id, "upload": what, "bytes": len(data)})
            return web.json_response({"stored": str(path), "bytes": len(data)}, status=201)

        return handle

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.home.server_cert, self.home.server_key)
        ctx.load_verify_locations(cafile=str(self.home.ca_cert))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    async def start(self) -> None:
        host, port = self.config.hub.bind_host, self.config.hub.http_port
        self._runner = await listen(
            self.app, host, port, self._tls(),
            "set [hub] http_port (or bind_host) in hub.toml or SPOKE_HUB_HUB__HTTP_PORT")
        log.info("hub https listening", extra={"host": host, "port": port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def dashboard_url(config: HubConfig) -> str:
    return f"https://{config.hub.public_host}:{config.hub.http_port}/"
