"""A stalled rollout on the Rollouts page, in headless Chromium: a real hub with two published
versions and a rule, two devices that enrolled for real (the fleet benchmark's simulated
devices: claim certificate, CSR, MQTT 5), and their rollback events sent the way a device's
outbox sends them (its own certificate, its own events topic, the daemon's Refusal payload).
One device fails the health gate on the target twice (the rollout stalls), the other once.
The other also sends text meant as markup (a mission name, an alert message): a device is not
trusted, so the pages must show it as text. The failing one reports health with a GPU (the
daemon's own sampler over a simulated NVML library: this machine has no GPU), so its device
page has GPU charts with points."""

import asyncio
import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from appliance import mqtt, topics
from appliance.health import DaemonFacts
from appliance.payloads import Event
from daemon.delivery.journal import Refusal
from daemon.health import NvmlReader
from daemon.health.sampler import Sampler
from scripts.bench_fleet import SimulatedDevice, claim_creds, enroll_all
from tests.delivery.conftest import make_artifact
from tests.health.fake_nvml import FakeNvml
from tests.site.shots import shot
from tests.support.browser import Browser, open_browser, playwright_missing
from tests.support.fleet import Hub, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

POLICY = """
[[rule]]
name = "bridges"
selector = "site=bridge-17"
model = "crack-vit"
version = ">=1.0,<2"
"""


def rolled_back(version: str) -> Event:
    """The event a daemon sends when a model fails its health gate and it rolls back."""
    refusal = Refusal(code="health-gate", reason="health gate failed: 3 inference errors",
                      name="crack-vit", version=version, sha256="ab" * 32,
                      active="crack-vit@1.0.0", ts=time.time())
    return Event(id=str(uuid.uuid4()), kind="model_rolled_back", ts=time.time(),
                 data=refusal.model_dump(mode="json", exclude={"final", "desired"}))


async def send(device: SimulatedDevice, events: list[Event]) -> None:
    creds = device.creds
    tls = mqtt.tls_context(creds / "ca.crt", creds / f"{device.device_id}.crt",
                           creds / f"{device.device_id}.key")
    hub = device.bundle.hub
    async with mqtt.client(hub.host, hub.mqtt_port, f"{device.device_id}-t", tls) as client:
        for event in events:
            await client.publish(topics.events(device.device_id), event.model_dump_json(), qos=1)


HOSTILE = '<img src="/x" onerror="document.title=\'owned\'">'


def hostile_events() -> list[Event]:
    """A detection and an alert whose device-chosen text is HTML."""
    return [
        Event(id=str(uuid.uuid4()), kind="detection", ts=time.time(), data={
            "image": "i1", "mission": HOSTILE, "labels": ["crack"], "max_probs": {"crack": 0.9},
            "captured_at": None, "gps": None, "model": {"name": "crack-vit", "version": "1.0.0"}}),
        Event(id=str(uuid.uuid4()), kind="alert", ts=time.time(), data={
            "alert": "disk_full", "state": "raised", "subject": "/", "severity": "critical",
            "message": HOSTILE}),
    ]


def api(hub: Hub, path: str) -> Any:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://localhost:{hub.http_port}{path}",
        headers={"Authorization": f"Bearer {hub.operator_token()}"},
    )
    with urllib.request.urlopen(request, context=ctx, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, list[str]]]:
    root = tmp_path_factory.mktemp("stall")
    hub = Hub(root)
    for seed, version in enumerate(("1.0.0", "1.1.0")):
        hub.publish(make_artifact(root, version, seed=seed))
    hub.apply_policy(POLICY)
    hub.start()
    try:
        payload = claim_creds(hub.bundle(root / "b17.spoke", "--max-uses", "2",
                                         labels="site=bridge-17"), root / "creds")
        devices = [SimulatedDevice(payload, root / "creds") for _ in range(2)]
        failing, flaky = devices

        async def scene() -> None:
            await enroll_all(devices, 2)
            await send(failing, [rolled_back("1.1.0"), rolled_back("1.1.0")])
            snapshot = Sampler(gpu=NvmlReader(FakeNvml())).sample(DaemonFacts())
            await failing.report(snapshot.model_dump(mode="json"), 0.3, time.time() + 1.0, 0)
            await send(flaky, [rolled_back("1.1.0"), rolled_back("1.0.0"), rolled_back("1.0.0"),
                               *hostile_events()])

        asyncio.run(scene())
        wait_for(lambda: api(hub, "/api/v1/rollouts")["rules"][0]["phase"] == "stalled", 60,
                 "the rollout to stall")
        wait_for(lambda: api(hub, "/api/v1/alerts")["active"], 60, "the alert")
        wait_for(lambda: len(api(hub, f"/api/v1/devices/{failing.device_id}/health")["points"])
                 >= 2, 60, "two health reports")
        yield hub, [failing.device_id, flaky.device_id]
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def browser(stalled: tuple[Hub, list[str]]) -> Iterator[Browser]:
    reason = playwright_missing()
    if reason:
        pytest.skip(reason)
    hub, _ = stalled
    with open_browser() as b:
        b.visit(f"https://localhost:{hub.http_port}/login#token={hub.operator_token()}").page.close()
        yield b


def test_the_api_names_the_device_that_failed_twice(stalled: tuple[Hub, list[str]]) -> None:
    hub, (failing, _) = stalled
    (rule,) = api(hub, "/api/v1/rollouts")["rules"]
    assert (rule["phase"], rule["target"], rule["stalled_devices"]) == (
        "stalled", "1.1.0", [failing])
    assert (rule["devices"], rule["rolled_back"]) == (2, 2)  # the flaky one failed once


@pytest.mark.parametrize("size", [(1366, 768), (390, 844)], ids=["1366x768", "390x844"])
def test_a_stalled_rollout_is_a_banner_naming_the_device(
    stalled: tuple[Hub, list[str]], browser: Browser, size: tuple[int, int]
) -> None:
    hub, (failing, flaky) = stalled
    visit = browser.visit(f"https://localhost:{hub.http_port}/rollouts", *size)
    p = visit.page
    banner = p.locator('#stalled [data-stalled="bridges"]')
    assert banner.is_visible()
    text = banner.inner_text()
    assert text.startswith("Rollout of crack-vit@1.1.0 (rule bridges) is stalled")
    assert failing in text and flaky not in text
    assert banner.locator("a").get_attribute("href") == f"/devices/{failing}"
    assert p.locator('tr[data-rule="bridges"]').get_attribute("class") == "stalled"
    # The banner comes before the table: an operator sees it without scrolling.
    banner_box, table_box = banner.bounding_box(), p.locator("table.rollouts").bounding_box()
    assert banner_box is not None and table_box is not None
    assert banner_box["y"] < table_box["y"] and banner_box["y"] + banner_box["height"] <= size[1]
    visit.screenshot(shot(f"dashboard-rollouts-stalled-{size[0]}x{size[1]}.png"))
    assert visit.console_errors == []
    p.close()


@pytest.mark.parametrize("path", ["/findings", "/alerts"])
def test_text_a_device_sends_is_shown_as_text_never_as_markup(
    stalled: tuple[Hub, list[str]], browser: Browser, path: str
) -> None:
    hub, _ = stalled
    visit = browser.visit(f"https://localhost:{hub.http_port}{path}")
    p = visit.page
    assert HOSTILE in p.locator("main").inner_text()
    assert p.locator('main img[src="/x"]').count() == 0
    assert p.title() != "owned"
    assert visit.console_errors == []
    p.close()


def test_gpu_health_is_charted_with_points(
    stalled: tuple[Hub, list[str]], browser: Browser
) -> None:
    hub, (failing, _) = stalled
    visit = browser.visit(f"https://localhost:{hub.http_port}/devices/{failing}")
    p = visit.page
    for title, cls in (("GPU temperature", "gpu"), ("GPU memory", "gpumem")):
        chart = p.locator(f'svg.chart[aria-label="{title}"]')
        assert int(chart.get_attribute("data-points") or 0) >= 2
        assert chart.locator(f"polyline.{cls}").count() >= 1
    assert visit.console_errors == []
    p.close()
