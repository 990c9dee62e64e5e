"""The overview with 1,000 devices: the fleet benchmark's simulated devices enroll for real
(claim certificate, CSR, MQTT 5 request/response) and report health over TLS, then Chromium
opens the overview. The render time is the page's own measurement (navigation start to the
first full render) and is printed beside the same page with one device, measured in the same
run: the machine is shared, so the number is reported, not asserted."""

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from daemon.health.sampler import Sampler
from scripts.bench_fleet import SimulatedDevice, claim_creds, enroll_all
from tests.site.shots import shot
from tests.support.browser import Browser, open_browser, playwright_missing
from tests.support.fleet import Hub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DEVICES = 1000
SITES = 10


@pytest.fixture
def browser() -> Iterator[Browser]:
    reason = playwright_missing()
    if reason:
        pytest.skip(reason)
    with open_browser() as b:
        yield b


async def simulate(hub: Hub, root: Path) -> list[SimulatedDevice]:
    from appliance.health import DaemonFacts

    devices = []
    for site in range(SITES):
        region = "north" if site % 2 else "south"
        bundle = hub.bundle(root / f"s{site}.spoke", "--max-uses", str(DEVICES),
                            labels=f"site=bridge-{site:02d},region={region}")
        payload = claim_creds(bundle, root / f"creds{site}")
        devices += [SimulatedDevice(payload, root / f"creds{site}")
                    for _ in range(DEVICES // SITES)]
    await enroll_all(devices, 32)
    snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")
    gate = asyncio.Semaphore(64)

    async def report(d: SimulatedDevice) -> None:
        async with gate:  # two reports each, so every device has a short history
            await d.report(snapshot, 0.5, time.time() + 0.7, 0)

    await asyncio.gather(*(report(d) for d in devices))
    return devices


def overview_ms(browser: Browser, hub: Hub, name: str) -> tuple[int, int]:
    """(render ms as the page measured it, rows shown)."""
    visit = browser.visit(f"https://localhost:{hub.http_port}/")
    ms = int(visit.page.locator("body").get_attribute("data-rendered-ms") or -1)
    rows = visit.page.locator("#devices tbody tr").count()
    visit.screenshot(shot(name))
    assert visit.console_errors == []
    visit.page.close()
    return ms, rows


def test_overview_of_1000_devices_renders_and_reports_its_time(
    tmp_path: Path, browser: Browser
) -> None:
    hub = Hub(tmp_path).start()
    try:
        browser.visit(f"https://localhost:{hub.http_port}/login#token={hub.operator_token()}")
        baseline_ms, _ = overview_ms(browser, hub, "dashboard-overview-empty.png")
        # Playwright's sync API holds this thread's event loop: simulate from another thread.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, simulate(hub, tmp_path)).result()
        runs = [overview_ms(browser, hub, "dashboard-overview-1000.png") for _ in range(3)]
        ms = sorted(r[0] for r in runs)
        assert {r[1] for r in runs} == {100}  # the first page of 100, not the whole fleet
        result = {"devices": DEVICES, "overview_render_ms": ms, "median_ms": ms[1],
                  "empty_fleet_ms": baseline_ms, "ratio_to_empty": ms[1] / max(1, baseline_ms)}
        print("\ndashboard overview:", json.dumps(result))
    finally:
        hub.stop()
