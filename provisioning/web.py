"""The hub's HTTPS server on its HTTP port: fleet API, dashboard, metrics, model repository.

Parts of the hub add their routes to ``HubWeb.app`` before it starts. TLS uses the broker's
server certificate (issued by the hub CA that every appliance already trusts from its bundle).
"""

import logging
import ssl

from aiohttp import web

from appliance.config import HubConfig
from appliance.errors import ConfigError
from provisioning.home import HubHome

log = logging.getLogger(__name__)


class HubWeb:
    name = "web"

    def __init__(self, home: HubHome, config: HubConfig) -> None:
        self.home = home
        self.config = config
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.home.server_cert, self.home.server_key)
        return ctx

    async def start(self) -> None:
        host, port = self.config.hub.bind_host, self.config.hub.http_port
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._tls())
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"the hub cannot listen on {host}:{port}: {exc.strerror}") from exc
        log.info("hub https listening", extra={"host": host, "port": port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
