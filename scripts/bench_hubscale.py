"""Several hub processes on PostgreSQL behind one mosquitto: enrollments per minute, health
ingest rate, and a hub process killed under load. Each measured with 1 process and with
``--processes`` (2 by default) in the same run: the single process is the baseline.

Simulated devices enroll for real (claim credential, CSR, certificate) and publish real
health snapshots with their own certificates, over mTLS on loopback.

    python -m scripts.bench_hubscale [--processes 2] [--devices 100] [--burst 20]
        [--interval 5] [--duration 30] [--json] [--keep DIR]

- enrollments per minute: every device enrolls, 32 at a time;
- ingest rate: every device publishes ``--burst`` reports back to back; reports stored per
  second from the first send until the last one is in the registry;
- killed under load: every device reports every ``--interval`` s for ``--duration`` s and the
  process that leads the singleton work is killed (SIGKILL) halfway. Reported: reports sent
  (acknowledged by the broker) and stored (lost: those not stored, with when each was sent
  relative to the kill), simulated clients' reconnections, how long after the kill the
  singleton work moved and the dead process's session was ended, and the ingest lag of the
  reports sent after the kill (how long the dead process's share took to be stored).
  A report is stored once per (device, taken-at time): a replay cannot add a row.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from provisioning.registry import engine_url
from scripts.bench_fleet import (
    SimulatedDevice,
    claim_creds,
    enroll_all,
    ingest_lag,
    percentile,
    report_all,
)
from tests.support import postgres
from tests.support.fleet import Process, wait_for
from tests.support.hubfleet import LEADS, HubFleet


def missing_reports(url: str, devices: list[SimulatedDevice], since: float) -> list[float]:
    """Taken-at times of the acknowledged reports that are not in the registry."""
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT device_id, ts FROM health WHERE ts >= :since")
            stored = {(r[0], r[1]) for r in conn.execute(query, {"since": since})}
    finally:
        engine.dispose()
    return sorted(t for d in devices for t in d.acked if (d.device_id, t) not in stored)


def stored_reports(url: str, since: float) -> int:
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM health WHERE ts >= :since")
            return int(conn.execute(query, {"since": since}).scalar() or 0)
    finally:
        engine.dispose()


def listed_processes(url: str) -> set[str]:
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT instance FROM hub_processes")).scalars())
    finally:
        engine.dispose()


async def burst(devices: list[SimulatedDevice], url: str, count: int) -> dict[str, Any]:
    """Every device sends ``count`` reports back to back; rate = stored / time to store all."""
    start = time.time()
    await report_all(devices, 0.0, 3600.0, count=count)
    sent = sum(d.sent for d in devices)
    deadline = time.time() + 120
    stored = stored_reports(url, start)
    while stored < sent and time.time() < deadline:
        await asyncio.sleep(0.2)
        stored = stored_reports(url, start)
    took = time.time() - start
    return {"reports": sent, "stored": stored, "seconds": took, "stored_per_s": stored / took}


async def watch_failover(
    url: str, survivors: list[Process], name: str, killed_at: float
) -> dict[str, float | None]:
    """Seconds from the kill until a survivor leads and until the dead session is ended."""
    leads = ended = None
    while (leads is None or ended is None) and time.time() < killed_at + 120:
        now = time.time() - killed_at
        if leads is None and any(LEADS in p.output() for p in survivors):
            leads = now
        if ended is None and name not in listed_processes(url):
            ended = now
        await asyncio.sleep(0.2)
    return {"singleton_moved_after_s": leads, "dead_session_ended_after_s": ended}


async def run_fleet(
    root: Path, url: str, processes: int, args: argparse.Namespace, kill: bool
) -> dict[str, Any]:
    fleet = HubFleet(root, url)
    try:
        hubs = [fleet.start_hub(f"hub-{i}") for i in range(processes)]
        wait_for(lambda: LEADS in hubs[0].output(), 30, "hub-0 to lead")
        bundle = fleet.hub.bundle(root / "sim.spoke", "--max-uses", str(args.devices + 10))
        payload = claim_creds(bundle, root / "creds")
        devices = [SimulatedDevice(payload, root / "creds") for _ in range(args.devices)]
        result: dict[str, Any] = {"processes": processes, "devices": args.devices}
        result["enrollments_per_minute"] = await enroll_all(devices, 32)
        result["ingest"] = await burst(devices, url, args.burst)
        for d in devices:
            d.acked.clear()
            d.reconnects = 0
        if not kill:
            return result

        async def kill_halfway() -> dict[str, Any]:
            await asyncio.sleep(args.duration / 2)
            hubs[0].proc.kill()
            killed_at = time.time()
            moved = await watch_failover(url, hubs[1:], "hub-0", killed_at)
            return {"killed_at": killed_at, **moved}

        killer = asyncio.create_task(kill_halfway())
        start = await report_all(devices, args.interval, args.duration)
        failover = await killer
        await asyncio.sleep(max(5.0, args.interval))  # what is in flight lands
        sent = sum(d.sent for d in devices)
        lags = ingest_lag(url, start)
        killed_at = failover.pop("killed_at")
        after = ingest_lag(url, killed_at)
        missing = missing_reports(url, devices, start)
        result["killed_under_load"] = {
            "interval_s": args.interval,
            "duration_s": args.duration,
            "reports_sent": sent,
            "reports_stored": len(lags),
            "reports_lost": len(missing),
            "device_reconnects": sum(d.reconnects for d in devices),
            "lost_sent_after_kill_s": [round(t - killed_at, 3) for t in missing],
            **failover,
            "ingest_lag_p50_s": percentile(lags, 50),
            "ingest_lag_p99_s": percentile(lags, 99),
            "after_kill_lag_p99_s": percentile(after, 99) if after else None,
            "after_kill_lag_max_s": max(after) if after else None,
        }
        return result
    finally:
        fleet.close()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with postgres.cluster() as cluster:
        for name, processes, kill in (("one", 1, False), ("several", args.processes, True)):
            url = cluster.create_database(f"bench_{name}")
            print(f"{name}: {processes} hub process(es)", file=sys.stderr, flush=True)
            if args.keep:
                root = args.keep / name
                root.mkdir(parents=True)
                results[name] = asyncio.run(run_fleet(root, url, processes, args, kill))
                continue
            with tempfile.TemporaryDirectory(prefix=f"spoke-bench-{name}-") as tmp:
                results[name] = asyncio.run(run_fleet(Path(tmp), url, processes, args, kill))
    one, several = results["one"], results["several"]
    results["enrollment_ratio"] = several["enrollments_per_minute"] / one["enrollments_per_minute"]
    results["ingest_ratio"] = several["ingest"]["stored_per_s"] / one["ingest"]["stored_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep each fleet's logs under this new folder")
    args = parser.parse_args()
    if args.processes < 2:
        parser.error("--processes: at least 2 (one is the baseline, and one is killed)")
    if not postgres.available():
        print("bench_hubscale: PostgreSQL is not installed (scripts/setup.sh installs it)",
              file=sys.stderr)
        raise SystemExit(2)
    results = bench(args)
    print(json.dumps(results, indent=2) if args.json else "\n".join(
        f"{k}: {v}" for k, v in results.items()
    ))


if __name__ == "__main__":
    main()
