"""The technician's status page, served by a real daemon (standalone, tiny model)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from PIL import Image

from daemon.web import pairing
from daemon.web.signed import UrlSigner
from tests.site.conftest import MISSION, Running, pinned, start_daemon
from tests.site.shots import shot

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium (Debian) missing")


async def status(running: Running, auth: bool = False) -> dict:
    code, body, headers = await running.get("/status.json",
                                            headers=running.auth if auth else None)
    assert code == 200
    assert headers["Cache-Control"] == "no-store"
    return json.loads(body)


async def test_status_json_shows_state_model_health_and_uplink(
        running: Running, mission: list[str]) -> None:
    s = await status(running)
    assert s["provisioning"]["state"] == "standalone"
    assert s["provisioning"]["stuck"] is False
    assert s["model"]["name"] == "tiny-vit" and s["model"]["version"] == "0.3.1"
    assert s["model"]["backend"] == "torch"
    assert s["health"]["gpu"]["status"] in ("ok", "absent", "unavailable", "fault")
    assert 0 <= s["health"]["memory_used_ratio"] <= 1
    assert s["uplink"]["by_status"]["done"] == len(mission)
    assert s["uplink"]["missions"][0]["mission"] == MISSION
    assert s["uplink"]["ready"] is True


async def test_recent_detections_have_signed_thumbnails_for_an_authenticated_page(
        running: Running, mission: list[str]) -> None:
    s = await status(running, auth=True)
    assert s["recent"], "the tiny model with low thresholds finds something"
    found = s["recent"][0]
    assert found["id"] in mission and found["labels"]
    assert "sig=" in found["thumbnail"] and "exp=" in found["thumbnail"]
    code, body, headers = await running.get(found["thumbnail"])  # an <img>: no header
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(body)).size) <= 320


async def test_an_anonymous_page_links_no_thumbnails(running: Running,
                                                     mission: list[str]) -> None:
    s = await status(running)
    assert s["recent"] and all(f["thumbnail"] is None for f in s["recent"])


async def test_a_thumbnail_without_token_or_signature_is_refused(
        running: Running, mission: list[str]) -> None:
    await status(running)
    code, _, _ = await running.get(f"/status/thumbs/{mission[0]}.jpg")
    assert code == 401


async def test_a_thumbnail_with_a_token_needs_no_signature(
        running: Running, mission: list[str]) -> None:
    s = await status(running)
    listed = s["recent"][0]["id"]
    code, _, headers = await running.get(f"/status/thumbs/{listed}.jpg", headers=running.auth)
    assert code == 200 and headers["Content-Type"] == "image/jpeg"


async def test_a_signature_for_another_image_or_a_changed_expiry_is_refused(
        running: Running, mission: list[str]) -> None:
    s = await status(running, auth=True)
    signed = s["recent"][0]["thumbnail"]
    other = next(i for i in mission if i != s["recent"][0]["id"])
    query = signed.split("?", 1)[1]
    code, _, _ = await running.get(f"/status/thumbs/{other}.jpg?{query}")
    assert code == 401
    exp = int(query.split("exp=")[1].split("&")[0])
    code, _, _ = await running.get(signed.replace(f"exp={exp}", f"exp={exp + 3600}"))
    assert code == 401


async def test_thumbnails_only_for_listed_detections(running: Running,
                                                     mission: list[str]) -> None:
    await status(running)
    code, _, _ = await running.get(f"/status/thumbs/{'0' * 64}.jpg", headers=running.auth)
    assert code == 404


def test_a_signed_link_expires() -> None:
    signer = UrlSigner(ttl_s=60)
    url = signer.sign("/status/thumbs/x.jpg", now=1000.0)
    exp, sig = (part.split("=")[1] for part in url.split("?")[1].split("&"))
    assert signer.valid("/status/thumbs/x.jpg", exp, sig, now=1059.0)
    assert not signer.valid("/status/thumbs/x.jpg", exp, sig, now=1061.0)


async def test_page_never_shows_a_token_without_a_pairing_offer(running: Running) -> None:
    s = await status(running)
    assert s["pairing"]["offer"] is None
    assert s["pairing"]["qr_text"] == running.base
    assert s["pairing"]["qr"].startswith("data:image/svg+xml")
    assert "spk_" not in json.dumps(s)


async def test_pairing_offer_shows_token_until_the_app_uses_it(
        running: Running, frames: list[Path]) -> None:
    uplink_root = running.state / "uplink"
    _, token = running.daemon.uplink.tokens.create("drone-app")
    pairing.write_offer(uplink_root, "drone-app", token, minutes=5)
    assert (uplink_root / "pairing.json").stat().st_mode & 0o077 == 0
    s = await status(running)
    assert s["pairing"]["offer"]["token"] == token
    assert s["pairing"]["qr_text"].startswith("spoke-uplink://pair?")
    assert token in s["pairing"]["qr_text"]
    running.token = token  # the app posts its first image with the paired token
    await running.post_frames(frames[:1], mission="pairing-test")
    s = await status(running)
    assert s["pairing"]["offer"] is None and s["pairing"]["paired"] == "drone-app"
    assert token not in json.dumps(s)
    assert not (uplink_root / "pairing.json").exists()


async def test_a_pairing_offer_also_opens_the_workbench_signed_in(running: Running) -> None:
    _, token = running.daemon.uplink.tokens.create("tablet")
    pairing.write_offer(running.state / "uplink", "tablet", token, minutes=5)
    wb = (await status(running))["pairing"]["workbench"]
    assert wb["url"] == f"{running.base}/workbench#token={token}"
    assert wb["qr"].startswith("data:image/svg+xml")
    pairing.remove_offer(running.state / "uplink")
    assert (await status(running))["pairing"]["workbench"] is None


async def test_expired_pairing_offer_is_not_shown(running: Running) -> None:
    uplink_root = running.state / "uplink"
    offer = pairing.write_offer(uplink_root, "late", "spk_x", minutes=1)
    data = json.loads((uplink_root / "pairing.json").read_text())
    data["expires_at"] = offer.created_at - 1
    (uplink_root / "pairing.json").write_text(json.dumps(data))
    s = await status(running)
    assert s["pairing"]["offer"] is None and "spk_x" not in json.dumps(s)


async def test_page_has_a_strict_content_security_policy(running: Running) -> None:
    code, body, headers = await running.get("/")
    assert code == 200 and b"Spoke appliance" in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert b"http://" not in body and b"https://" not in body  # no external assets


async def test_status_page_can_be_turned_off(tmp_path: Path) -> None:
    daemon, stop, task = await start_daemon(tmp_path / "state", None, status_page=False)
    try:
        import aiohttp

        tls = aiohttp.TCPConnector(ssl=pinned(tmp_path / "state"))
        async with aiohttp.ClientSession(connector=tls) as s, \
                s.get(f"https://127.0.0.1:{daemon.api.port}/status.json") as r:
            assert r.status == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@needs_chromium
@pytest.mark.parametrize(("name", "width", "height"),
                         [("phone", 390, 844), ("desktop", 1280, 1300)])
async def test_status_page_renders_in_chromium(running: Running, mission: list[str], name: str,
                                               width: int, height: int) -> None:
    from tests.support.browser import render

    path = shot(f"status-{name}.png")
    page = await asyncio.to_thread(render, running.base + "/", path, width, height)
    assert page.console_errors == []
    assert "tiny-vit 0.3.1" in page.dom
    assert "Standalone (no hub)" in page.dom
    assert 'data-image="' in page.dom  # recent detections rendered
    assert path.stat().st_size > 10_000


@pytest.fixture
async def unprovisioned(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A daemon that looks for its bundle and finds none: the technician's first sight."""
    daemon, stop, task = await start_daemon(tmp_path / "state", None, standalone=False)
    base = f"https://127.0.0.1:{daemon.api.port}"
    for _ in range(200):
        if daemon.status.data["provisioning"]["state"] == "waiting-for-bundle":
            break
        await asyncio.sleep(0.05)
    yield base, pinned(tmp_path / "state")
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_stuck_provisioning_shows_its_reason(
        unprovisioned: tuple[str, ssl.SSLContext]) -> None:
    import aiohttp

    base, tls = unprovisioned
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as s, \
            s.get(base + "/status.json") as r:
        data = await r.json()
    prov = data["provisioning"]
    assert prov["state"] == "waiting-for-bundle" and prov["stuck"] is True
    assert "no bundle found" in prov["reason"]
    assert data["model"] is None or data["model"].get("name") is None
    assert data["uplink"]["ready"] is False


@needs_chromium
async def test_stuck_page_renders_the_reason_in_chromium(
        unprovisioned: tuple[str, ssl.SSLContext]) -> None:
    from tests.support.browser import render

    path = shot("status-stuck-phone.png")
    page = await asyncio.to_thread(render, unprovisioned[0] + "/", path, 390, 844)
    assert page.console_errors == []
    assert "Waiting for a provisioning bundle" in page.dom
    assert "no bundle found" in page.dom and "Needs attention" in page.dom


def test_spoke_pair_offers_a_token_and_cancel_revokes_it(tmp_path: Path) -> None:
    from daemon.cli import main
    from daemon.uplink.tokens import TokenStore

    assert main(["pair", "--state-dir", str(tmp_path), "--name", "tablet", "--minutes", "5"]) == 0
    offer = pairing.read_offer(tmp_path / "uplink")
    assert offer is not None and offer.name == "tablet" and not offer.expired()
    store = TokenStore(tmp_path / "uplink" / "tokens.db")
    try:
        assert store.verify(offer.token) == "tablet"
        assert main(["pair", "--state-dir", str(tmp_path), "--cancel"]) == 0
        assert pairing.read_offer(tmp_path / "uplink") is None
        assert store.verify(offer.token) is None  # never used: revoked with the offer
    finally:
        store.close()


def test_spoke_pair_refuses_a_long_window(tmp_path: Path) -> None:
    from daemon.cli import main

    assert main(["pair", "--state-dir", str(tmp_path), "--minutes", "600"]) == 2
    assert pairing.read_offer(tmp_path / "uplink") is None


# --- HTTPS by default ------------------------------------------------------------------------


async def test_a_standalone_appliance_serves_https_with_a_self_signed_certificate(
        running: Running) -> None:
    cert = x509.load_pem_x509_certificate(
        (running.state / "api" / "self-signed.crt").read_bytes())
    assert cert.issuer == cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    s = await status(running)
    assert s["api"]["tls"] is True and s["api"]["url"].startswith("https://")


async def test_plain_http_is_refused_on_the_https_port(running: Running) -> None:
    import aiohttp

    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s, \
                s.get(running.base.replace("https://", "http://") + "/healthz") as r:
            await r.read()


async def test_the_pairing_code_pins_the_served_certificate(running: Running) -> None:
    from urllib.parse import parse_qs, urlsplit

    _, token = running.daemon.uplink.tokens.create("pin-test")
    pairing.write_offer(running.state / "uplink", "pin-test", token, minutes=5)
    s = await status(running)
    served = x509.load_pem_x509_certificate(
        (running.state / "api" / "self-signed.crt").read_bytes())
    pin = parse_qs(urlsplit(s["pairing"]["qr_text"]).query)["sha256"][0]
    assert pin == served.fingerprint(hashes.SHA256()).hex()


async def test_plain_http_only_when_configured_and_the_page_says_so(tmp_path: Path) -> None:
    import aiohttp

    daemon, stop, task = await start_daemon(tmp_path / "state", None, plain_http=True)
    try:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{daemon.api.port}/status.json") as r:
            data = await r.json()
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{daemon.api.port}/") as r:
            page = await r.text()
        assert data["api"]["tls"] is False and data["api"]["url"].startswith("http://")
        assert "Plain HTTP" in page and 'id="pair-plain"' in page
        assert not (tmp_path / "state" / "api").exists()  # no certificate made or served
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
