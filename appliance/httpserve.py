"""One aiohttp app served on one address, for the daemon's API and the hub's HTTPS alike: a
port that is taken (or a host that is not ours) is a ``ConfigError`` naming the setting to
change, not a traceback, and nothing is left half-started."""

from __future__ import annotations

import ssl

from aiohttp import web

from appliance.errors import ConfigError


async def listen(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None,
                 fix: str) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` (HTTPS with ``tls``); ``fix`` says what to change when
    the address cannot be had. The caller cleans the runner up on stop."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; {fix}") from exc
    return runner
