"""One aiohttp server for everything the daemon serves over HTTP, on ``[api] listen``.

Other parts of the daemon add their routes to ``server.app`` before it starts; the server
itself only owns liveness and ``/metrics``.
"""

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from appliance.config import ApiSection
from appliance.httpserve import listen
from daemon.api.tls import ApiTls

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class ApiServer:
    name = "api"

    def __init__(
        self,
        config: ApiSection,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        tls: ApiTls | None = None,
    ) -> None:
        """``tls``: the daemon's choice of certificate (HTTPS by default); without it, a bare
        server (tests of one part) serves ``[api] tls_cert`` or plain HTTP."""
        self.config = config
        self.tls = tls
        self.app = web.Application(client_max_size=config.max_upload_bytes + 1)
        self.app.router.add_get("/healthz", self._healthz)
        self._metrics = metrics
        if metrics is not None:
            self.app.router.add_get("/metrics", self._metrics_handler)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        body, content_type = self._metrics()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    def _tls(self) -> ssl.SSLContext | None:
        if self.tls is not None:
            return self.tls.context()
        if not self.config.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return ctx

    async def start(self) -> None:
        host, port = parse_listen(self.config.listen)
        self._runner = await listen(self.app, host, port, self._tls(),
                                    "set [api] listen in spoke.toml or SPOKE_API__LISTEN")
        self.port = int(self._runner.addresses[0][1])
        log.info(
            "api listening",
            extra={"host": host, "port": self.port,
                   "tls": self.tls.kind() if self.tls else bool(self.config.tls_cert)},
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
