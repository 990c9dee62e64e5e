"""The hub's fleet view: health history, alerts, /metrics for Prometheus, and the dashboard."""

import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.fleet import Appliance, Hub, wait_for


def fetch(url: str, token: str | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        return bytes(response.read())


def test_hub_keeps_health_of_each_device(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    device = wait_for(
        lambda: (d := hub.devices()[device_id])["health"]["at"] and d, 20, "a health report"
    )
    assert 0 <= device["health"]["memory_used_ratio"] <= 1
    assert device["health"]["gpu_status"] in ("absent", "unavailable")


def test_alerts_arrive_as_events_through_the_outbox(online: tuple[Hub, Appliance, str]) -> None:
    """No model is active in this test fleet, so the no_active_model alert is raised."""
    hub, _, device_id = online
    device = wait_for(
        lambda: (d := hub.devices()[device_id])["alerts"] and d,
        30,
        "the no_active_model alert at the hub",
    )
    assert "no_active_model" in [a["alert"] for a in device["alerts"]]


def test_devices_table_shows_health_at_a_glance(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    from tests.support.fleet import cli

    wait_for(lambda: hub.devices()[device_id]["health"]["at"], 20, "a health report")
    table = cli("spoke-hub", "devices", "--home", str(hub.home)).stdout
    assert "HEALTH" in table and "cpu " in table and "mem " in table


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_hub_metrics_pass_promtool_and_label_devices(
    online: tuple[Hub, Appliance, str], tmp_path: Path
) -> None:
    hub, _, device_id = online
    wait_for(lambda: hub.devices()[device_id]["health"]["at"], 20, "a health report")
    body = fetch(f"https://localhost:{hub.http_port}/metrics", hub.operator_token())
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    assert (
        f'spoke_device_up{{device="{device_id}",label_region="north",label_site="bridge-17"}} 1.0'
        in text
    )
    assert "spoke_device_memory_used_ratio{" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_daemon_metrics_endpoint_passes_promtool(online: tuple[Hub, Appliance, str]) -> None:
    _, appliance, _ = online
    body = fetch(f"https://127.0.0.1:{appliance.api_port}/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"spoke_hub_last_contact_timestamp_seconds" in body


def test_dashboard_api_lists_devices(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    page = json.loads(
        fetch(f"https://localhost:{hub.http_port}/api/v1/devices", hub.operator_token())
    )
    assert [d["id"] for d in page["items"]] == [device_id]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian) missing")
def test_dashboard_renders_devices_in_chromium_without_console_errors(
    online: tuple[Hub, Appliance, str], tmp_path: Path
) -> None:
    from tests.support.browser import render

    hub, _, device_id = online
    sign_in = f"https://localhost:{hub.http_port}/login#token={hub.operator_token()}"
    page = render(sign_in, tmp_path / "dashboard.png", width=1280, height=720)
    assert f'data-device="{device_id}"' in page.dom
    assert "online" in page.dom
    assert page.console_errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
