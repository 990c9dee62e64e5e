"""The operator's dashboard against a real fleet: a hub with its broker, three enrolled
appliances (real daemons), two published model versions rolled out with a canary, detection
events sent the way a device's outbox sends them, and the pages in headless Chromium (Playwright
driving the system Chromium)."""

import asyncio
import json
import platform
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from appliance import mqtt, topics
from appliance.payloads import Event
from daemon.state import StateDir, load_identity
from tests.delivery.conftest import make_artifact
from tests.site.shots import shot
from tests.support.browser import Browser, open_browser, playwright_missing
from tests.support.fleet import Appliance, Hub, cli, wait_for

# The module fixture starts a hub, three appliances and a canary rollout: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PHONE = (390, 844)
DESKTOP = (1366, 768)
MODEL_ENV = {
    "SPOKE_MODELS__BACKEND": "onnxruntime",
    "SPOKE_MODELS__GATE_QUIET_S": "1",
    "SPOKE_MODELS__RETRY_INITIAL_S": "0.5",
    "SPOKE_MODELS__RETRY_CAP_S": "2",
}
POLICY = """
[[rule]]
name = "bridges"
selector = "site in (bridge-17, bridge-18)"
model = "crack-vit"
version = ">=1.0,<2"
canary = 50
"""


@dataclass
class Fleet:
    hub: Hub
    boxes: dict[str, Appliance]  # by site
    ids: dict[str, str]  # site -> device id
    base: str

    def api(self, path: str, method: str = "GET") -> Any:
        """The JSON API as a script uses it: an operator token as the bearer."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(self.base + path, method=method, headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {self.hub.operator_token()}",
        })
        with urllib.request.urlopen(request, context=ctx, timeout=30) as response:
            return json.loads(response.read())

    def api_error(self, path: str, method: str = "GET") -> tuple[int, str]:
        try:
            self.api(path, method)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["error"]
        raise AssertionError(f"{path} answered 2xx")


async def send_events(box: Appliance, events: list[Event]) -> None:
    """Publish as the device does from its outbox: its own certificate, its events topic."""
    ident = load_identity(StateDir(box.state_dir))
    assert ident is not None
    tls = mqtt.tls_context(ident.ca, ident.cert, ident.key)
    async with mqtt.client(ident.hub_host, ident.mqtt_port, f"{ident.device_id}-t", tls) as c:
        for event in events:
            await c.publish(topics.events(ident.device_id), event.model_dump_json(), qos=1)


def detection(n: int, mission: str, labels: list[str]) -> Event:
    return Event(id=f"det-{mission}-{n}", kind="detection", ts=time.time(), data={
        "image": f"img{n:04d}", "mission": mission, "drone": "d1", "captured_at": None,
        "labels": labels, "max_probs": dict.fromkeys(labels, 0.9), "gps": None,
        "model": {"name": "crack-vit", "version": "1.1.0"},
    })


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("dashboard")
    hub = Hub(root).start()
    for i, version in enumerate(("1.0.0", "1.1.0")):
        hub.publish(make_artifact(root, version, seed=i))
    hub.apply_policy(POLICY)
    sites = {"bridge-17": "region=north", "bridge-18": "region=south", "depot-1": "region=north"}
    boxes = {
        site: Appliance(root, hub, site).start(
            hub.bundle(root / f"{site}.spoke", labels=f"site={site},{extra}"), env=MODEL_ENV
        )
        for site, extra in sites.items()
    }
    try:
        ids = {site: box.wait_enrolled(120) for site, box in boxes.items()}
        for site in ("bridge-17", "bridge-18"):
            hub.wait_model(ids[site], "1.1.0", timeout=180)
        # depot-1 matches no rule, so it runs no model and raises no_active_model.
        wait_for(lambda: hub.devices()[ids["depot-1"]]["alerts"], 60, "an alert from depot-1")
        asyncio.run(send_events(boxes["bridge-17"], [
            detection(1, "north-span", ["crack", "spallation"]),
            detection(2, "north-span", ["background"]),
            detection(3, "north-span", ["crack"]),
        ]))
        wait_for(lambda: len(hub.events(ids["bridge-17"], "detection")) == 3, 30, "detections")
        yield Fleet(hub, boxes, ids, f"https://localhost:{hub.http_port}")
    finally:
        for box in boxes.values():
            box.kill()
        hub.stop()


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Browser]:
    """One Chromium profile, signed in once with the hub's sign-in link (an operator token)."""
    reason = playwright_missing()
    if reason:
        pytest.skip(reason)
    with open_browser() as b:
        b.visit(f"{fleet.base}/login#token={fleet.hub.operator_token()}").page.close()
        yield b


# --- the JSON API -----------------------------------------------------------------------------


def test_api_and_cli_list_the_same_devices_alerting_first(fleet: Fleet) -> None:
    page = fleet.api("/api/v1/devices?limit=2")
    rest = fleet.api(f"/api/v1/devices?limit=2&cursor={page['next_cursor']}")
    listed = [d["id"] for d in page["items"] + rest["items"]]
    assert rest["next_cursor"] is None and page["total"] == 3
    cli_rows = json.loads(cli("spoke-hub", "devices", "--home", str(fleet.hub.home),
                              "--json").stdout)
    assert listed == [d["id"] for d in cli_rows]
    assert listed[0] == fleet.ids["depot-1"]
    assert [s["site"] for s in page["sites"]] == ["bridge-17", "bridge-18", "depot-1"]
    depot = page["items"][0]
    assert depot["model"] is None and depot["desired_model"].startswith("none")


def test_filter_selects_what_a_placement_rule_would(fleet: Fleet) -> None:
    selector = urllib.parse.quote("site in (bridge-17, bridge-18), region!=south")
    page = fleet.api(f"/api/v1/devices?selector={selector}")
    assert [d["id"] for d in page["items"]] == [fleet.ids["bridge-17"]]
    table = cli("spoke-hub", "devices", "--home", str(fleet.hub.home), "--selector",
                "region=south").stdout
    assert fleet.ids["bridge-18"] in table and fleet.ids["bridge-17"] not in table
    assert "null" not in table


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/v1/devices?selector=site%20in%20(a", 400, "bad filter"),
        ("/api/v1/devices?limit=0", 400, "limit must be"),
        ("/api/v1/devices?limit=many", 400, "limit must be"),
        ("/api/v1/devices?cursor=-3", 400, "bad cursor"),
        ("/api/v1/devices/nosuch", 404, "no device"),
        ("/api/v1/devices/nosuch/health", 404, "no device"),
        ("/api/v1/alerts?before=yesterday", 400, "before must be"),
        ("/api/v1/findings?days=0", 400, "days must be"),
    ],
)
def test_bad_api_input_is_a_clear_json_error(
    fleet: Fleet, path: str, status: int, message: str
) -> None:
    code, error = fleet.api_error(path)
    assert (code, message in error) == (status, True), error
    assert fleet.api("/api/v1/devices")["total"] == 3


def test_health_history_is_paged_not_sent_whole(fleet: Fleet) -> None:
    device = fleet.ids["bridge-17"]
    wait_for(lambda: len(fleet.api(f"/api/v1/devices/{device}/health")["points"]) >= 4, 30,
             "four health reports")
    first = fleet.api(f"/api/v1/devices/{device}/health?limit=2")
    older = fleet.api(f"/api/v1/devices/{device}/health?limit=2&before={first['next_before']}")
    assert len(first["points"]) == 2 and len(older["points"]) == 2
    assert older["points"][-1]["at"] < first["points"][0]["at"]
    assert 0 <= first["points"][-1]["memory_used_ratio"] <= 1


def test_rollout_shows_the_canary_at_the_right_counts(fleet: Fleet) -> None:
    (rule,) = fleet.api("/api/v1/rollouts")["rules"]
    assert (rule["rule"], rule["target"], rule["previous"]) == ("bridges", "1.1.0", "1.0.0")
    assert (rule["devices"], rule["on_target"], rule["committed"]) == (2, 2, 2)
    assert (rule["canary_percent"], len(rule["canary_devices"]), rule["canary_committed"]) == (
        50, 1, 1)
    assert rule["canary_devices"][0] in (fleet.ids["bridge-17"], fleet.ids["bridge-18"])
    assert (rule["rolled_back"], rule["refused"], rule["phase"]) == (0, 0, "complete")


def test_findings_count_labels_and_severity_per_mission(fleet: Fleet) -> None:
    body = fleet.api("/api/v1/findings?days=1")
    (mission,) = body["missions"]
    assert (mission["mission"], mission["site"]) == ("north-span", "bridge-17")
    assert mission["images"] == 3
    assert mission["labels"] == {"crack": 2, "spallation": 1}
    assert mission["severity"] == {"high": 1, "medium": 1, "low": 0}
    port = fleet.boxes["bridge-17"].api_port
    assert mission["report_url"].endswith(f":{port}/v1/missions/north-span/report")


# --- the pages in Chromium --------------------------------------------------------------------


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366x768", "390x844"])
@pytest.mark.parametrize("page", ["/", "/device", "/rollouts", "/findings", "/alerts"])
def test_pages_render_without_console_errors(
    fleet: Fleet, browser: Browser, page: str, size: tuple[int, int]
) -> None:
    path = f"/devices/{fleet.ids['bridge-17']}" if page == "/device" else page
    visit = browser.visit(fleet.base + path, *size)
    name = {"/": "overview"}.get(page, page.strip("/"))
    # build/screenshots; SPOKE_SCREENSHOTS=docs/screenshots refreshes the README's pictures.
    visit.screenshot(shot(f"dashboard-{name}-{size[0]}x{size[1]}.png"))
    assert visit.console_errors == []
    assert visit.page.locator("#error").is_hidden()
    # Laid out for the viewport: wide tables scroll inside their box, the page itself does not.
    overflow = visit.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    # Everything it loaded came from the hub itself (no CDN).
    loaded = visit.page.evaluate(
        "performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(url.startswith(fleet.base + "/") for url in loaded), loaded
    visit.page.close()


@pytest.mark.parametrize("path", ["/", "/rollouts", "/findings", "/alerts", "/devices/x"])
def test_pages_are_served_with_a_strict_content_security_policy(fleet: Fleet, path: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(fleet.base + path, headers={
        "Accept": "text/html", "Authorization": f"Bearer {fleet.hub.operator_token()}"})
    with urllib.request.urlopen(request, context=ctx, timeout=30) as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in html and " style=" not in html  # no inline code to allow


def test_overview_groups_sites_and_puts_alerting_devices_first(
    fleet: Fleet, browser: Browser
) -> None:
    visit = browser.visit(fleet.base + "/")
    p = visit.page
    assert p.locator(".card[data-site]").all_inner_texts()[0].startswith("bridge-17")
    assert p.locator('.card[data-site="depot-1"]').inner_text().count("with active alerts") == 1
    assert p.locator("tbody tr").first.get_attribute("data-device") == fleet.ids["depot-1"]
    assert "null" not in p.locator("#devices").inner_text()
    p.fill("#selector", "site in (bridge-17, bridge-18), region!=south")
    p.click("#filter button")
    from playwright.sync_api import expect

    # A locator wait, not wait_for_function: the page's CSP (no 'unsafe-eval') refuses that.
    expect(p.locator("tbody tr")).to_have_count(1)
    assert p.locator("tbody tr").first.get_attribute("data-device") == fleet.ids["bridge-17"]
    assert "selector=" in p.url
    p.fill("#selector", "site in (")
    p.click("#filter button")
    p.wait_for_selector("#error:not([hidden])")
    assert "bad filter" in p.locator("#error").inner_text()
    p.close()


def test_device_page_charts_health_and_shows_model_history(
    fleet: Fleet, browser: Browser
) -> None:
    visit = browser.visit(fleet.base + f"/devices/{fleet.ids['bridge-17']}")
    p = visit.page
    points = p.locator("svg.chart[data-points]").first.get_attribute("data-points")
    assert points is not None and int(points) >= 2
    assert p.locator("svg.chart polyline").count() >= 3  # CPU, memory, disk
    history = p.locator("#history").inner_text()
    assert "committed" in history and "crack-vit@1.1.0" in history
    software = p.locator("#software").inner_text()
    assert "crack-vit@1.1.0 (committed)" in software
    assert f"kernel {platform.release()}" in software  # the OS as the appliance reports it
    updated = p.locator("#history tr:has(.software_updated)").inner_text()
    assert "first start" in updated and f"kernel {platform.release()}" in updated
    assert "Cores" in p.locator("#hardware").inner_text()
    identity = p.locator("#identity").inner_text()
    assert "Certificate expires" in identity and "Key storage\nfile" in identity
    assert visit.console_errors == []
    p.close()


def test_findings_page_counts_the_mission_and_links_its_report(
    fleet: Fleet, browser: Browser
) -> None:
    visit = browser.visit(fleet.base + "/findings")
    mission = visit.page.locator('tr[data-mission="north-span"]')
    assert "bridge-17" in mission.inner_text()
    port = fleet.boxes["bridge-17"].api_port
    link = mission.locator("a", has_text="report").get_attribute("href")
    assert link is not None and link.endswith(f":{port}/v1/missions/north-span/report")
    assert visit.console_errors == []
    visit.page.close()


def test_rollouts_page_shows_the_canary_share(fleet: Fleet, browser: Browser) -> None:
    visit = browser.visit(fleet.base + "/rollouts")
    row = visit.page.locator('tr[data-rule="bridges"]').inner_text()
    assert "50 % · 1 of 1 committed" in row and "complete" in row
    visit.page.close()


@pytest.mark.parametrize("path", ["/api/v1/rollouts", "/api/v1/devices/x/health", "/alerts"])
def test_pages_and_api_need_an_operator(fleet: Fleet, path: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(fleet.base + path, context=ctx, timeout=30)
    assert refused.value.code == 401


def test_acknowledging_an_unknown_alert_is_refused(fleet: Fleet) -> None:
    code, error = fleet.api_error("/api/v1/alerts/nosuch/ack", "POST")
    assert (code, "no alert" in error) == (404, True)



def test_acknowledged_alert_stays_acknowledged_across_reload(
    fleet: Fleet, browser: Browser
) -> None:
    visit = browser.visit(fleet.base + "/alerts")
    p = visit.page
    row = p.locator(f"#active tr:has(a:text('{fleet.ids['depot-1']}'))").first
    row.locator("button.ack-button").click()
    p.wait_for_selector("#active .acked")
    p.reload()
    p.wait_for_selector("body[data-rendered-ms]")
    acked = p.locator("#active .acked").first.inner_text()
    assert acked.startswith("acknowledged by tests, ")  # the name of the operator token
    body = fleet.api("/api/v1/alerts")
    (alert,) = [a for a in body["active"] if a["device_id"] == fleet.ids["depot-1"]]
    assert alert["acknowledged"]["by"] == "tests"
    assert alert["acknowledged"]["at"] <= time.time()
    assert visit.console_errors == []
    p.close()
