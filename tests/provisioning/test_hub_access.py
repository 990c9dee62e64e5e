"""The hub lets only its own in: operators for the API, dashboard and metrics; enrolled devices
(or operators) for the model repository. Each refusal has its own test, against the real
aiohttp app on real TLS with certificates from the hub's real CA."""

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from appliance import identity
from provisioning import ca, operators
from provisioning.home import HubHome, init_home
from provisioning.registry import Registry
from provisioning.web import HubWeb
from tests.support.fleet import free_port

TARGET = "/repository/1.root.json"
#: What only operators reach: the API, the metrics, the dashboard.
OPERATOR_PATHS = ["/api/v1/devices", "/metrics", "/"]


@dataclass
class Site:
    home: HubHome
    registry: Registry
    base: str
    token: str

    def device_tls(self, device_id: str, other_ca: bool = False) -> ssl.SSLContext:
        """A client context with a certificate for ``device_id`` (from the hub CA or another)."""
        ca_key, ca_cert = ca.create_ca("Someone else's CA") if other_ca else self.home.load_ca()
        key = identity.generate_key()
        cert = ca.issue(ca_key, ca_cert, key, device_id, _later())
        folder = self.home.root / "clients" / f"{device_id}-{other_ca}"
        folder.mkdir(parents=True)
        (folder / "key.pem").write_bytes(identity.key_to_pem(key))
        (folder / "cert.pem").write_bytes(ca.to_pem(cert))
        ctx = self.tls()
        ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        return ctx

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home.ca_cert))

    def enroll(self, device_id: str) -> None:
        """A registry row as an enrollment writes it (the claim first: devices reference it)."""
        if self.registry.claim("c1") is None:
            self.registry.add_claim("c1", "secret", {}, 2e9, 10, 1)
        self.registry.add_device(device_id, "c1", {}, {}, 2)


def _later() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    home = HubHome(tmp_path / "hub")
    init_home(home, "localhost", free_port(), free_port())
    config = home.load_config()
    registry = Registry(home.registry)
    web = HubWeb(home, config, registry)
    (home.repository / "public" / "1.root.json").write_text('{"signed": {}}')
    _, token = operators.create_token(registry, "alice")
    await web.start()
    try:
        yield Site(home, registry, f"https://localhost:{config.hub.http_port}", token)
    finally:
        await web.stop()
        registry.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def status(
    http: aiohttp.ClientSession, site: Site, path: str, tls: ssl.SSLContext | None = None,
    token: str | None = None,
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(
        site.base + path, ssl=tls or site.tls(), headers=headers, allow_redirects=False
    ) as resp:
        return resp.status


# --- operators: API, metrics, dashboard ---------------------------------------------------------


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_no_credential_is_refused(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(site.base + path, ssl=site.tls()) as resp:
        assert resp.status == 401
        assert "spoke-hub tokens create" in (await resp.json())["error"]


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_operator_token_is_let_in(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    assert await status(http, site, path, token=site.token) == 200


async def test_a_browser_without_a_session_is_sent_to_sign_in(
    site: Site, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        site.base + "/", ssl=site.tls(), headers={"Accept": "text/html"}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/login"


async def test_unknown_token_is_refused(site: Site, http: aiohttp.ClientSession) -> None:
    assert await status(http, site, "/api/v1/devices", token="spk_" + "A" * 43) == 401


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_revoked_token_is_refused(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    operators.revoke_token(site.registry, "alice")
    assert await status(http, site, path, token=site.token) == 401


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_a_device_certificate_is_not_an_operator(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    site.enroll("dev-a")
    assert await status(http, site, path, tls=site.device_tls("dev-a")) == 401


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_a_revoked_device_is_refused(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    site.enroll("dev-a")
    tls = site.device_tls("dev-a")
    site.registry.revoke_device("dev-a")
    assert await status(http, site, path, tls=tls) == 401


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_a_certificate_from_another_ca_is_refused(
    site: Site, http: aiohttp.ClientSession, path: str
) -> None:
    """TLS itself refuses it, even beside a valid token: the handshake fails first."""
    with pytest.raises(aiohttp.ClientConnectionError):
        await status(http, site, path, tls=site.device_tls("dev-a", other_ca=True),
                      token=site.token)


# --- sign-in and the session cookie ------------------------------------------------------------


async def sign_in(http: aiohttp.ClientSession, site: Site, token: str) -> aiohttp.ClientResponse:
    async with http.post(
        site.base + "/login", data={"token": token}, ssl=site.tls(), allow_redirects=False
    ) as resp:
        await resp.read()
        return resp


async def test_sign_in_sets_a_strict_secure_http_only_cookie(
    site: Site, http: aiohttp.ClientSession
) -> None:
    resp = await sign_in(http, site, site.token)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-spoke-hub-session=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert await status(http, site, "/api/v1/devices") == 200


async def test_sign_in_with_a_wrong_token_sets_no_cookie(
    site: Site, http: aiohttp.ClientSession
) -> None:
    resp = await sign_in(http, site, "spk_wrong")
    assert resp.status == 401
    assert "Set-Cookie" not in resp.headers
    assert await status(http, site, "/api/v1/devices") == 401


async def test_revoking_the_token_ends_its_sessions(
    site: Site, http: aiohttp.ClientSession
) -> None:
    await sign_in(http, site, site.token)
    operators.revoke_token(site.registry, "alice")
    assert await status(http, site, "/api/v1/devices") == 401


async def test_sign_out_ends_the_session(site: Site, http: aiohttp.ClientSession) -> None:
    await sign_in(http, site, site.token)
    async with http.post(site.base + "/logout", ssl=site.tls(), allow_redirects=False) as resp:
        assert resp.status == 303
    http.cookie_jar.clear()
    assert await status(http, site, "/api/v1/devices") == 401


async def test_a_foreign_page_cannot_write_with_the_session(
    site: Site, http: aiohttp.ClientSession
) -> None:
    """A write carried by the cookie from another origin is refused before any handler."""
    await sign_in(http, site, site.token)
    url = site.base + "/api/v1/devices"
    async with http.post(url, ssl=site.tls(), headers={"Origin": "https://evil.test"}) as resp:
        assert resp.status == 401
    async with http.post(url, ssl=site.tls(), headers={"Origin": site.base}) as resp:
        assert resp.status == 405  # let through; this route only reads


# --- the model repository ----------------------------------------------------------------------


async def test_repository_refuses_no_credential(site: Site, http: aiohttp.ClientSession) -> None:
    assert await status(http, site, TARGET) == 401


async def test_repository_serves_an_enrolled_device(
    site: Site, http: aiohttp.ClientSession
) -> None:
    site.enroll("dev-a")
    assert await status(http, site, TARGET, tls=site.device_tls("dev-a")) == 200


async def test_repository_serves_an_operator(site: Site, http: aiohttp.ClientSession) -> None:
    assert await status(http, site, TARGET, token=site.token) == 200


async def test_repository_refuses_a_certificate_from_another_ca(
    site: Site, http: aiohttp.ClientSession
) -> None:
    """TLS itself refuses it: the handshake fails before any HTTP is read."""
    site.enroll("dev-a")
    with pytest.raises(aiohttp.ClientConnectionError):
        await status(http, site, TARGET, tls=site.device_tls("dev-a", other_ca=True))


async def test_repository_refuses_a_revoked_device(
    site: Site, http: aiohttp.ClientSession
) -> None:
    site.enroll("dev-a")
    tls = site.device_tls("dev-a")
    site.registry.revoke_device("dev-a")
    assert await status(http, site, TARGET, tls=tls) == 401


async def test_repository_refuses_a_hub_certificate_for_no_enrolled_device(
    site: Site, http: aiohttp.ClientSession
) -> None:
    assert await status(http, site, TARGET, tls=site.device_tls("never-enrolled")) == 401


async def test_repository_refuses_a_revoked_token(
    site: Site, http: aiohttp.ClientSession
) -> None:
    operators.revoke_token(site.registry, "alice")
    assert await status(http, site, TARGET, token=site.token) == 401


async def test_health_check_and_sign_in_page_stay_public(
    site: Site, http: aiohttp.ClientSession
) -> None:
    for path in ("/healthz", "/login", "/static/login.js"):
        assert await status(http, site, path) == 200




# --- devices: their own uploads (support bundles, fine-tune reviews) -------------------------

#: Each upload route and the folder under the hub's home where it is kept.
UPLOADS = [("support-bundles", "support"), ("finetune-reviews", "finetune-reviews")]


async def upload(http: aiohttp.ClientSession, site: Site, route: str, device_id: str,
                 tls: ssl.SSLContext, body: bytes = b"tarball") -> int:
    async with http.post(f"{site.base}/v1/devices/{device_id}/{route}", data=body,
                         ssl=tls) as resp:
        return resp.status


@pytest.mark.parametrize(("route", "folder"), UPLOADS)
async def test_a_device_upload_is_kept_under_its_own_id(
    site: Site, http: aiohttp.ClientSession, route: str, folder: str
) -> None:
    site.enroll("dev-a")
    assert await upload(http, site, route, "dev-a", site.device_tls("dev-a")) == 201
    [kept] = (site.home.root / folder / "dev-a").glob("*.tar.gz")
    assert kept.read_bytes() == b"tarball"


@pytest.mark.parametrize(("route", "folder"), UPLOADS)
async def test_a_device_may_not_upload_for_another(
    site: Site, http: aiohttp.ClientSession, route: str, folder: str
) -> None:
    site.enroll("dev-a")
    site.enroll("dev-b")
    assert await upload(http, site, route, "dev-b", site.device_tls("dev-a")) == 403
    assert not (site.home.root / folder / "dev-b").exists()


@pytest.mark.parametrize(("route", "folder"), UPLOADS)
async def test_a_revoked_device_may_not_upload(
    site: Site, http: aiohttp.ClientSession, route: str, folder: str
) -> None:
    site.enroll("dev-a")
    tls = site.device_tls("dev-a")
    site.registry.revoke_device("dev-a")
    assert await upload(http, site, route, "dev-a", tls) == 403
    assert not (site.home.root / folder / "dev-a").exists()


@pytest.mark.parametrize(("route", "folder"), UPLOADS)
async def test_an_empty_upload_is_refused(
    site: Site, http: aiohttp.ClientSession, route: str, folder: str
) -> None:
    site.enroll("dev-a")
    assert await upload(http, site, route, "dev-a", site.device_tls("dev-a"), b"") == 400
    assert not (site.home.root / folder / "dev-a").exists()


@pytest.mark.parametrize(("route", "folder"), UPLOADS)
async def test_a_device_the_registry_does_not_know_may_not_upload(
    site: Site, http: aiohttp.ClientSession, route: str, folder: str
) -> None:
    assert await upload(http, site, route, "dev-a", site.device_tls("dev-a")) == 403
    assert not (site.home.root / folder / "dev-a").exists()
