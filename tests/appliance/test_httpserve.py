"""``appliance.httpserve.listen``, the one way the daemon's API and the hub serve HTTP(S): a
taken address is a clear error naming the setting to change, and nothing keeps running."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web

from appliance.errors import ConfigError
from appliance.httpserve import listen


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def app() -> web.Application:
    served = web.Application()
    served.router.add_get("/", hello)
    return served


async def test_an_address_in_use_is_a_config_error_that_says_what_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*; set it"):
            await listen(app(), "127.0.0.1", port, None, "set it")


async def test_a_free_address_serves_the_app_until_cleaned_up() -> None:
    runner = await listen(app(), "127.0.0.1", 0, None, "set it")
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
            assert (r.status, await r.text()) == (200, "hello")
    finally:
        await runner.cleanup()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorError):  # nothing listens any more
            await s.get(f"http://127.0.0.1:{port}/")
