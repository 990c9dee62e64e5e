"""Dashboard benchmark: the fleet overview of a 1,000-device fleet, as the API and the page see it.

A real hub (its process, managed broker and HTTPS) whose registry holds ``--devices`` devices in
``--sites`` sites, each with a health history, an alert history (one in 20 with an alert still
raised) and a reported model, two published model versions and a policy with a canary rule.
The rows are written straight into the hub's registry: this measures the dashboard's reads,
not enrollment (``bench_fleet`` measures that, and ``tests/fleet/test_dashboard_scale.py``
opens the overview over a fleet that enrolled for real).

Measured, each against a same-run baseline (the same hub with an empty fleet, before the rows
are written; the machine is shared, so ratios, not absolute times, are what compare):
- ``GET /api/v1/devices?limit=100``, what the overview page loads;
- ``GET /healthz`` while four overview requests are in flight, against ``/healthz`` alone: a
  hub that does its database work on the event loop answers nothing else meanwhile;
- the overview page in headless Chromium, its own measurement (navigation start to the first
  full render), when Playwright and /usr/bin/chromium are installed.

    python -m scripts.bench_dashboard [--devices 1000] [--sites 10] [--history 20] [--json]
"""

import argparse
import json
import os
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.support.fleet import REPO, Hub

POLICY = """
[[rule]]
name = "north"
selector = "region=north"
model = "crack-vit"
version = ">=1.0,<2"
canary = 10

[[rule]]
name = "rest"
model = "crack-vit"
version = "==1.0.0"
"""


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get_ms(url: str, token: str | None = None) -> float:
    headers = {"Accept": "application/json"} | (
        {"Authorization": f"Bearer {token}"} if token else {})
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                context=_context(), timeout=120) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def median_ms(url: str, token: str | None, n: int) -> float:
    get_ms(url, token)  # warm: TLS session, first-use caches
    return statistics.median(get_ms(url, token) for _ in range(n))


def healthz_under_load(base: str, token: str, n: int) -> float:
    """/healthz's median time while four overview requests keep the hub busy."""
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            get_ms(base + "/api/v1/devices?limit=100", token)

    workers = [threading.Thread(target=busy) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        return statistics.median(get_ms(base + "/healthz") for _ in range(n))
    finally:
        stop.set()
        for w in workers:
            w.join()


def fill(hub: Hub, devices: int, sites: int, history: int) -> None:
    """Devices, health snapshots and alert events as rows (setting the scene, not measured)."""
    from appliance.health import DaemonFacts
    from daemon.health.sampler import Sampler
    from provisioning.registry import Registry
    from provisioning.schema import devices as devices_table
    from provisioning.schema import events, health

    snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")
    registry = Registry(hub.home / "registry.db")
    now = time.time()
    try:
        registry.add_claim("bench", "bench-token", {}, now + 86400, devices, 1)
        model = {"name": "crack-vit", "version": "1.0.0", "state": "committed"}
        rows, snaps, alerts = [], [], []
        for i in range(devices):
            site = i % sites
            device_id = f"bench-{i:05d}"
            labels = {"site": f"bridge-{site:02d}", "region": "north" if site % 2 else "south"}
            rows.append({
                "id": device_id, "claim_id": "bench", "labels": json.dumps(labels),
                "facts": json.dumps({"hostname": device_id, "cpu_count": 8}),
                "cert_serial": str(100 + i), "enrolled_at": now - 86400, "availability": "online",
                "last_seen": now, "software_version": "bench",
                "state": json.dumps({"model": model, "software_version": "bench"}),
            })
            snaps += [{"device_id": device_id, "ts": now - 10 * k, "received_at": now - 10 * k,
                       "snapshot": json.dumps(snapshot | {"taken_at_s": now - 10 * k})}
                      for k in range(history)]
            # Every device once lost the hub and got it back; one in 20 has a disk alert now.
            for k, state in enumerate(("raised", "cleared")):
                alerts.append(alert(device_id, "hub_unreachable", state, now - 3600 + k))
            if i % 20 == 0:
                alerts.append(alert(device_id, "disk_full", "raised", now - 60))
        with registry.engine.begin() as conn:
            conn.execute(devices_table.insert(), rows)
            conn.execute(health.insert(), snaps)
            conn.execute(events.insert(), alerts)
    finally:
        registry.close()


def alert(device_id: str, name: str, state: str, ts: float) -> dict[str, Any]:
    data = {"alert": name, "state": state, "subject": device_id, "severity": "warning",
            "message": f"{name} {state}"}
    return {"id": str(uuid.uuid4()), "device_id": device_id, "kind": "alert", "ts": ts,
            "data": json.dumps(data), "received_at": ts}


def page_ms(hub: Hub, token: str, loads: int) -> list[int] | None:
    """The overview's own render time in Chromium, per load; None without a browser here."""
    from tests.support.browser import open_browser, playwright_missing

    if playwright_missing():
        return None
    base = f"https://localhost:{hub.http_port}"
    out = []
    with open_browser() as browser:
        browser.visit(f"{base}/login#token={token}").page.close()
        for _ in range(loads):
            visit = browser.visit(base + "/")
            out.append(int(visit.page.locator("body").get_attribute("data-rendered-ms") or -1))
            if visit.console_errors:
                raise RuntimeError(f"overview console errors: {visit.console_errors}")
            visit.page.close()
    return out


def measure(hub: Hub, token: str, requests: int) -> dict[str, Any]:
    base = f"https://localhost:{hub.http_port}"
    pages = page_ms(hub, token, 3)
    return {
        "overview_api_ms": median_ms(base + "/api/v1/devices?limit=100", token, requests),
        "healthz_ms": median_ms(base + "/healthz", None, requests),
        "healthz_during_overview_ms": healthz_under_load(base, token, requests),
        "overview_page_ms": sorted(pages) if pages else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--history", type=int, default=20, help="health snapshots per device")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    from tests.delivery.conftest import make_artifact

    with tempfile.TemporaryDirectory(prefix="spoke-bench-") as tmp:
        root = Path(tmp)
        hub = Hub(root)
        for seed, version in enumerate(("1.0.0", "1.1.0")):
            hub.publish(make_artifact(root, version, seed=seed))
        hub.apply_policy(POLICY)
        hub.start()
        try:
            token = hub.operator_token()
            empty = measure(hub, token, args.requests)
            fill(hub, args.devices, args.sites, args.history)
            fleet = measure(hub, token, args.requests)
        finally:
            hub.stop()
    results: dict[str, Any] = {
        "devices": args.devices, "sites": args.sites, "health_history": args.history,
        "empty": empty, "fleet": fleet,
        "overview_api_ratio_to_empty": fleet["overview_api_ms"] / empty["overview_api_ms"],
        "healthz_during_overview_ratio_to_idle":
            fleet["healthz_during_overview_ms"] / fleet["healthz_ms"],
    }
    if fleet["overview_page_ms"] and empty["overview_page_ms"]:
        results["overview_page_median_ms"] = statistics.median(fleet["overview_page_ms"])
        results["overview_page_ratio_to_empty"] = (
            results["overview_page_median_ms"] / statistics.median(empty["overview_page_ms"]))
    print(json.dumps(results, indent=2) if args.json
          else "\n".join(f"{k}: {v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
