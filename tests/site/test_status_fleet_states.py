"""The status page for states a test box cannot reach for real: enrolled with a hub, GPUs that
run hot and throttle, a nearly full disk. The health snapshot is hand-built (tests/health
builders, a fake GPU clearly named FAKE) and the alerts come from the real evaluator."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import pytest
from aiohttp import web

from appliance.config import HealthSection
from appliance.health import ActiveModel, DaemonFacts, GpuSection
from daemon.health.alerts import AlertEvaluator
from daemon.web.status import Sources, StatusPage
from tests.health.builders import filesystem, gpu, snapshot
from tests.site.shots import shot


def fleet_sources() -> Sources:
    snap = snapshot(
        filesystems=[filesystem("/", 0.93), filesystem("/var/lib/spoke", 0.4)],
        gpu_section=GpuSection(status="ok", driver_version="550.54", gpus=[
            gpu(0, temperature_celsius=95.0, utilization_ratio=0.97,
                memory_used_bytes=13 * 2**30, memory_total_bytes=16 * 2**30,
                power_draw_watts=61.0, throttle_reasons=["sw_thermal_slowdown"]),
            gpu(1, temperature_celsius=48.0, utilization_ratio=0.12,
                memory_used_bytes=2**30, memory_total_bytes=16 * 2**30, power_draw_watts=18.0),
        ]),
        daemon=DaemonFacts(active_model=ActiveModel(name="codebrim-vit-s16", version="2.4.0"),
                           last_hub_contact_s=time.time() - 4),
        taken_at_s=time.time(),
    )
    alerts = AlertEvaluator(HealthSection())
    alerts.evaluate(snap)
    now = time.time()
    status = {
        "device_id": "dev-3f9a0c51e2b7d4a68c10",
        "provisioning": {"state": "enrolled", "reason": None, "since": now - 7200},
        "hub": {"connected": True, "since": now - 3500, "address": "hub.example.org:8883",
                "last_contact": now - 4, "error": None},
    }
    model = {"name": "codebrim-vit-s16", "version": "2.4.0", "backend": "tensorrt",
             "state": "probation", "desired": "codebrim-vit-s16@2.4.0", "hold": False,
             "last_error": None}
    return Sources(status=lambda: status, health=lambda: snap, alerts=lambda: alerts.active,
                   model=lambda: model)


@pytest.fixture
async def base(aiohttp_server: Any) -> str:
    app = web.Application()
    StatusPage(fleet_sources()).install(app)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_alerts_and_gpus_are_in_the_status(base: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(base + "/status.json") as r:
        data = json.loads(await r.read())
    raised = {a["alert"] for a in data["alerts"]}
    assert {"disk_full", "gpu_temperature", "gpu_throttling"} <= raised
    assert [g["name"] for g in data["health"]["gpu"]["gpus"]] == ["FAKE NVIDIA A2"] * 2
    assert data["provisioning"]["stuck"] is False and data["hub"]["connected"] is True


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian) missing")
async def test_enrolled_box_with_hot_gpu_renders_in_chromium(base: str) -> None:
    from tests.support.browser import render

    path = shot("status-alerts-desktop.png")
    page = await asyncio.to_thread(render, base + "/", path, 1280, 1000)
    assert page.console_errors == []
    assert "GPU too hot" in page.dom and "Disk almost full" in page.dom
    assert "#1 FAKE NVIDIA A2" in page.dom and "Connected" in page.dom
    assert "Needs attention" in page.dom
