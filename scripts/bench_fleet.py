"""Fleet benchmarks on loopback: time to online, idle memory, enrollment rate, health ingest.

Each number is reported beside a baseline measured in the same run, since these machines are
noisy: python's own start-up for time to online, a bare interpreter for memory, one device
enrolling alone for the enrollment rate, one device reporting alone for the ingest lag.

    python -m scripts.bench_fleet [--runs 10] [--devices 1000] [--json]
    python -m scripts.bench_fleet --enrollment-cost [--enrolled 10000] [--samples 50]

Several hub processes on PostgreSQL: ``scripts.bench_hubscale``.
"""

import argparse
import asyncio
import functools
import json
import os
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from appliance import identity, mqtt, topics
from appliance.bundle import BundlePayload
from appliance.health import DaemonFacts
from appliance.payloads import EnrollRequest
from daemon.health.sampler import Sampler
from tests.support.fleet import REPO, Appliance, Hub, wait_for
from tests.support.hubfleet import FakeDevice


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def spread(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p25": q[0],
        "p75": q[2],
    }


def online_devices(hub: Hub) -> set[str]:
    """Read the registry directly: polling through the CLI would slow what is measured."""
    conn = sqlite3.connect(hub.home / "registry.db")
    try:
        rows = conn.execute("SELECT id FROM devices WHERE availability = 'online'").fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def time_to_online(hub: Hub, root: Path, runs: int) -> dict[str, Any]:
    bundle = hub.bundle(root / "ttl.spoke", "--max-uses", str(runs + 1))
    times, rss = [], []
    baseline = []
    for i in tqdm(range(runs), desc="time to online", file=sys.stderr, disable=None):
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "daemon", "--help"], capture_output=True, cwd=REPO)
        baseline.append(time.monotonic() - started)
        box = Appliance(root, hub, f"ttl{i}")
        before = online_devices(hub)
        started = time.monotonic()
        box.start(bundle)
        try:
            wait_for(lambda b=before: online_devices(hub) - b, 60, "the appliance online")
            times.append(time.monotonic() - started)
            if i == 0:
                time.sleep(10)
                assert box.process is not None
                rss.append(rss_bytes(box.process.proc.pid))
        finally:
            box.kill()
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(1)
    bare_rss = rss_bytes(bare.pid)
    bare.wait()
    return {
        "time_to_online_s": spread(times),
        "python_start_and_import_s": spread(baseline),
        "ratio_to_start_and_import": statistics.median(times) / statistics.median(baseline),
        "daemon_idle_rss_bytes": rss[0],
        "bare_python_rss_bytes": bare_rss,
        "rss_ratio_to_bare_python": rss[0] / bare_rss,
    }


class SimulatedDevice(FakeDevice):
    """A device that enrolls for real with a claim credential and then reports health."""

    def __init__(self, bundle: BundlePayload, creds: Path) -> None:
        self.bundle = bundle
        self.creds = creds
        self.private_key = identity.generate_key()
        device_id = identity.device_id_for(self.private_key.public_key())
        super().__init__(
            device_id, bundle.hub.host, bundle.hub.mqtt_port, creds / "ca.crt",
            creds / f"{device_id}.crt", creds / f"{device_id}.key",
        )

    async def enroll(self) -> None:
        b = self.bundle
        request = EnrollRequest(
            claim_id=b.claim.id,
            claim_token=b.claim.token,
            csr=identity.build_csr(self.private_key, {"simulated": True}).decode(),
            software_version="bench",
        )
        response_topic = topics.enroll_response(self.device_id)
        tls = claim_tls(self.creds)
        async with mqtt.client(b.hub.host, b.hub.mqtt_port, self.device_id, tls) as client:
            await client.subscribe(response_topic, qos=1)
            await client.publish(
                topics.ENROLL_REQUEST,
                request.model_dump_json(),
                qos=1,
                properties=mqtt.publish_properties(response_topic, b"c"),
            )
            async for message in client.messages:
                answer = json.loads(message.payload)  # type: ignore[arg-type]
                if answer["status"] != "accepted":
                    raise RuntimeError(answer)
                self.cert.write_text(answer["certificate"])
                self.key.write_bytes(identity.key_to_pem(self.private_key))
                return


@functools.cache
def claim_tls(creds: Path) -> ssl.SSLContext:
    """The claim's TLS context, loaded once for all simulated devices of a bundle: each real
    device loads its own, but on its own CPU, not on the machine that simulates the fleet."""
    return mqtt.tls_context(creds / "ca.crt", creds / "claim.crt", creds / "claim.key")


def claim_creds(bundle_file: Path, creds: Path) -> BundlePayload:
    import base64

    payload = BundlePayload.model_validate_json(
        base64.b64decode(json.loads(bundle_file.read_text())["payload"])
    )
    creds.mkdir(exist_ok=True)
    (creds / "ca.crt").write_text(payload.ca_certificate)
    (creds / "claim.crt").write_text(payload.claim.certificate)
    (creds / "claim.key").write_text(payload.claim.key)
    return payload


async def enroll_all(devices: list[SimulatedDevice], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(devices), desc=f"enrolling x{concurrency}", file=sys.stderr, disable=None)

    async def one(d: SimulatedDevice) -> None:
        async with gate:
            await d.enroll()
            bar.update()

    started = time.monotonic()
    await asyncio.gather(*(one(d) for d in devices))
    bar.close()
    return len(devices) / (time.monotonic() - started) * 60


def ingest_lag(registry: Path | str, since: float) -> list[float]:
    """Hub receive time minus device send time of each report stored since ``since``."""
    import sqlalchemy as sa

    from provisioning.registry import engine_url

    engine = sa.create_engine(engine_url(registry))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT received_at - ts FROM health WHERE ts >= :since"),
                {"since": since},
            )
            return [float(r[0]) for r in rows]
    finally:
        engine.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def fleet_load(
    hub: Hub, root: Path, n: int, interval: float, duration: float
) -> dict[str, Any]:
    payload = claim_creds(hub.bundle(root / "sim.spoke", "--max-uses", str(n + 10)), root / "creds")
    devices = [SimulatedDevice(payload, root / "creds") for _ in range(n + 1)]
    single = await enroll_all(devices[:1], 1)
    rate = await enroll_all(devices[1:], 32)

    async def run(group: list[SimulatedDevice]) -> list[float]:
        start = await report_all(group, interval, duration)
        await asyncio.sleep(1)
        return ingest_lag(hub.home / "registry.db", start)

    alone = await run(devices[:1])
    print(f"reporting: {n} devices every {interval:.0f} s for {duration:.0f} s", file=sys.stderr)
    loaded = await run(devices[1:])
    return {
        "enrollments_per_minute": rate,
        "enrollments_per_minute_single_device": single,
        "enrollment_ratio_to_single": rate / single,
        "enrollment_ratio_to_1000_per_minute_anchor": rate / 1000,
        "health_devices": n,
        "health_interval_s": interval,
        "health_messages": len(loaded),
        "ingest_lag_p50_s": percentile(loaded, 50),
        "ingest_lag_p99_s": percentile(loaded, 99),
        "ingest_lag_alone_p50_s": percentile(alone, 50),
        "ingest_lag_p99_ratio_to_alone_p50": percentile(loaded, 99) / percentile(alone, 50),
    }


TOKEN = "bench-claim-token-0123456789"


def fill(registry: Any, start: int, end: int) -> None:
    """Enrolled devices as rows, in one transaction (setting the scene, not measured)."""
    from provisioning.schema import claims, devices

    rows = [
        {"id": f"filler-{i:06d}", "claim_id": "bench", "labels": '{"site": "bench"}',
         "facts": "{}", "cert_serial": str(10 + i), "enrolled_at": time.time()}
        for i in range(start, end)
    ]
    if rows:
        with registry.engine.begin() as conn:
            conn.execute(devices.insert(), rows)
            conn.execute(claims.update().where(claims.c.id == "bench")
                         .values(used=claims.c.used + len(rows)))


def enrollment_cost(urls: tuple[str, str], sizes: tuple[int, int], samples: int) -> dict[str, Any]:
    """The hub's whole enrollment path (request checks, certificate signed by the CA, registry
    write; no ACL or CRL rewrite) timed in-process in two registries, one holding ``sizes[0]``
    devices and one ``sizes[1]``. Enrollments alternate between the two, so a load swing on
    the shared machine hits both alike; the small fleet is the same-run baseline."""
    from appliance.config import HubConfig
    from provisioning.broker import render_acl
    from provisioning.home import HubHome, init_home
    from provisioning.hub import HubService
    from provisioning.registry import Registry

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="spoke-bench-enroll-") as tmp:
        hubs, registries = [], []
        for url, size in zip(urls, sizes, strict=True):
            home = HubHome(Path(tmp) / f"hub-{size}")
            init_home(home, "localhost", 1883, 8443)
            registry = Registry(url or home.registry)
            registry.add_claim("bench", TOKEN, {"site": "bench"}, time.time() + 86400, 10**6, 1)
            fill(registry, 0, size)
            registries.append(registry)
            hubs.append(HubService(home, HubConfig(), registry))
        try:
            times: list[list[float]] = [[], []]
            for i in tqdm(range(samples), desc="enrolling", file=sys.stderr, disable=None):
                for which in (0, 1) if i % 2 == 0 else (1, 0):
                    raw = EnrollRequest(
                        claim_id="bench",
                        claim_token=TOKEN,
                        csr=identity.build_csr(identity.generate_key(), {}).decode(),
                        software_version="bench",
                    ).model_dump_json().encode()
                    started = time.perf_counter()
                    hubs[which]._grant(raw)
                    times[which].append((time.perf_counter() - started) * 1000)
            for which, size in enumerate(sizes):
                results[f"enroll_ms_at_{size}"] = spread(times[which])
                results[f"acl_bytes_at_{size}"] = len(render_acl(registries[which]).encode())
        finally:
            for registry in registries:
                registry.close()
    small, large = (results[f"enroll_ms_at_{size}"]["median"] for size in sizes)
    results["enroll_ms_ratio_large_to_small"] = large / small
    return results


async def report_all(
    devices: list[SimulatedDevice], interval: float, duration: float, count: int | None = None
) -> float:
    """Every device reports every ``interval`` (spread evenly) for ``duration`` (or ``count``
    times); returns the start time."""
    snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")
    start = time.time()
    await asyncio.gather(
        *(
            d.report(snapshot, interval, start + duration, interval * i / len(devices), count)
            for i, d in enumerate(devices)
        )
    )
    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--enrollment-cost",
        action="store_true",
        help="only the cost of one enrollment at 10 vs --enrolled devices (SQLite, and "
        "PostgreSQL in a throw-away cluster when its server tools are installed)",
    )
    parser.add_argument("--enrolled", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    if args.enrollment_cost:
        from tests.support import postgres

        sizes = (10, args.enrolled)
        results = {"sqlite": enrollment_cost(("", ""), sizes, args.samples)}
        if postgres.available():
            with postgres.cluster() as cluster:
                urls = (cluster.create_database("small"), cluster.create_database("large"))
                results["postgresql"] = enrollment_cost(urls, sizes, args.samples)
        print(json.dumps(results, indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="spoke-bench-") as tmp:
        root = Path(tmp)
        hub = Hub(root).start()
        try:
            results = time_to_online(hub, root, args.runs)
            results |= asyncio.run(
                fleet_load(hub, root, args.devices, args.interval, args.duration)
            )
        finally:
            hub.stop()
    print(
        json.dumps(results, indent=2)
        if args.json
        else "\n".join(f"{k}: {v}" for k, v in results.items())
    )


if __name__ == "__main__":
    main()
