"""Signing in to the workbench: the session cookie stands for an API token, nothing more."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from daemon.web import pairing
from daemon.web.session import COOKIE, CSRF_HEADER
from tests.workbench.conftest import Appliance


async def sign_in(app: Appliance, token: str) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
    jar = aiohttp.CookieJar(unsafe=True)  # a cookie for 127.0.0.1
    s = aiohttp.ClientSession(cookie_jar=jar)
    async with s.post(app.base + "/workbench/session", json={"token": token}) as r:
        body = await r.json()
        assert r.status == 200, body
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP in this test: a Secure cookie would never return
    return s, body


async def test_refused_without_a_session(appliance: Appliance) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/workbench/api/review", "/workbench/api/context", "/v1/samples",
                     f"/workbench/api/images/{appliance.images[0]}/preview.jpg"):
            async with s.get(appliance.base + path) as r:
                assert r.status == 401, path
                assert (await r.json())["error"] == "unauthorized"
        async with s.get(appliance.base + "/workbench/session") as r:
            assert (await r.json()) == {"client": None, "csrf": None}
        async with s.get(appliance.base + "/workbench") as r:  # the page itself is public
            assert r.status == 200
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "https://" not in await r.text()


async def test_a_wrong_token_is_refused_with_its_reason(appliance: Appliance) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(appliance.base + "/workbench/session",
                          json={"token": "spk_not-a-token"}) as r:
            body = await r.json()
            assert r.status == 401 and "not valid" in body["reason"]
            assert "Set-Cookie" not in r.headers
        async with s.post(appliance.base + "/workbench/session", data=b"[1") as r:
            assert r.status == 400 and "token" in (await r.json())["reason"]


async def test_a_session_acts_with_its_tokens_rights(appliance: Appliance) -> None:
    s, who = await sign_in(appliance, appliance.token)
    async with s:
        assert who["client"] == "engineer-laptop"
        async with s.get(appliance.base + "/v1/samples") as r:
            assert r.status == 200
        async with s.get(appliance.base + "/workbench/api/review") as r:
            review = await r.json()
            assert r.status == 200 and review["total"] > 0
        body = {"image_id": appliance.images[0], "box": [0, 0, 32, 32], "labels": ["crack"]}
        async with s.post(appliance.base + "/v1/samples", json=body) as r:
            assert r.status == 403 and (await r.json())["error"] == "csrf"
        assert await appliance.samples() == []
        async with s.post(appliance.base + "/v1/samples", json=body,
                          headers={CSRF_HEADER: who["csrf"]}) as r:
            assert r.status == 201, await r.text()
        [sample] = await appliance.samples()
        assert sample["origin"] == {"image_id": appliance.images[0], "box": [0, 0, 32, 32]}


async def test_revoking_the_token_ends_its_sessions(appliance: Appliance) -> None:
    s, _ = await sign_in(appliance, appliance.token)
    async with s:
        appliance.daemon.uplink.tokens.revoke("engineer-laptop")
        async with s.get(appliance.base + "/v1/samples") as r:
            body = await r.json()
            assert r.status == 401 and body["error"] == "session_expired"
            assert "sign in again" in body["reason"]


async def test_a_session_ends_when_its_token_expires(appliance: Appliance) -> None:
    _, token = appliance.daemon.uplink.tokens.create("visitor", expires_in_s=1.0)
    s, _ = await sign_in(appliance, token)
    async with s:
        async with s.get(appliance.base + "/v1/samples") as r:
            assert r.status == 200
        await asyncio.sleep(1.2)
        async with s.get(appliance.base + "/v1/samples") as r:
            assert r.status == 401 and (await r.json())["error"] == "session_expired"


async def test_a_pairing_token_signs_in(appliance: Appliance) -> None:
    """``spoke pair`` makes a fresh uplink token: the engineer can sign in with it."""
    _, token = appliance.daemon.uplink.tokens.create("tablet")
    pairing.write_offer(appliance.state / "uplink", "tablet", token, minutes=5)
    s, who = await sign_in(appliance, token)
    async with s:
        assert who["client"] == "tablet"
        async with s.delete(appliance.base + "/workbench/session") as r:
            assert r.status == 200
        s.cookie_jar.clear()
        async with s.get(appliance.base + "/v1/samples",
                         cookies={COOKIE: "stale-session-id"}) as r:
            assert r.status == 401 and (await r.json())["error"] == "session_expired"
