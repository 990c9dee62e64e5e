"""The hub at fleet scale, on PostgreSQL behind one mosquitto: enrollments per minute, health
ingest lag, a hub process killed under load, and the cost of one enrollment in a large fleet.
Each measured against a baseline from the same run: one hub process for the rates and lags
(then ``--processes`` more join the same fleet), a 10-device registry for the enrollment cost.

Simulated devices publish real health snapshots (about 3 KB) with their own certificates over
mTLS on loopback, each on its own connection, held by ``--sim-processes`` worker processes of
bare MQTT 5 publishers (tests.support.litefleet) that bring the connections up at
``--connect-rate`` a second before the first part and keep them up through all parts. The
enrollment rate uses devices that enroll for real (claim credential, CSR, certificate, on
aiomqtt in this process); the ingest devices get their certificates from the hub's CA
directly, so setting up 10,000 of them does not take 10,000 enrollments.

    python -m scripts.bench_hubscale [--processes 3] [--devices 2000] [--interval 30]
        [--duration 90] [--enroll 300] [--enrolled 10000] [--sim-processes 2]
        [--connect-rate 200] [--enroll-only] [--json] [--keep DIR]

- enrollments per minute: ``--enroll`` devices enroll, 32 at a time;
- ingest: ``--devices`` devices each report every ``--interval`` s (spread evenly) for
  ``--duration`` s; lag = the hub's receive time minus the device's send time, per report;
  lost = reports the broker acknowledged that are not in the registry once it has stored
  none for 30 s (late ones are not lost: the lag says how late);
- killed under load: the same load with ``--processes`` processes, and the one that leads
  the singleton work killed (SIGKILL) halfway. Reported: lost and duplicate reports, when the
  singleton work moved and the dead process's session was ended, and the lag of the reports
  sent after the kill (the dead process's share waits in its session until then);
- the 1-minute load average at the end of each part (the machine may be shared), and the CPU
  seconds each part of the bench used during an ingest run (hubs, broker, PostgreSQL, the
  simulated devices), also per report sent: what the machine spent where;
- enrollment cost: the hub's enrollment path timed in a registry of 10 devices and one of
  ``--enrolled`` (scripts.bench_fleet.enrollment_cost), on PostgreSQL.

``--enroll-only`` measures the enrollment rates and cost and skips the ingest parts.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from appliance.health import DaemonFacts
from daemon.health.sampler import Sampler
from provisioning.registry import engine_url
from scripts.bench_fleet import (
    SimulatedDevice,
    claim_creds,
    enroll_all,
    enrollment_cost,
    ingest_lag,
    percentile,
)
from tests.support import postgres
from tests.support.fleet import Process, wait_for
from tests.support.hubfleet import LEADS, HubFleet
from tests.support.litefleet import Address, LiteFleet, Part, Spec

#: A report not stored after the registry saw no new one for this long is counted lost.
QUIET_S = 30.0


def query(url: str, sql: str, **params: float) -> list[Any]:
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


#: Each device's acknowledged taken-at times in one part.
Acked = dict[str, list[float]]


def missing_reports(url: str, acked: Acked, since: float) -> list[float]:
    """Taken-at times of the acknowledged reports that are not in the registry."""
    rows = query(url, "SELECT device_id, ts FROM health WHERE ts >= :since", since=since)
    stored = {(r[0], r[1]) for r in rows}
    return sorted(t for d, times in acked.items() for t in times if (d, t) not in stored)


def duplicate_rows(url: str, since: float) -> int:
    """Rows beyond one per (device, taken-at time); the schema's unique index keeps it 0."""
    sql = "SELECT count(*) - count(DISTINCT (device_id, ts)) FROM health WHERE ts >= :since"
    return int(query(url, sql, since=since)[0][0])


def listed_processes(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT instance FROM hub_processes")}


async def enrollment_rate(
    fleet: HubFleet, root: Path, pg_datadir: Path, count: int
) -> dict[str, Any]:
    """Enrollments per minute, the CPU milliseconds each took per part of the bench, and the
    machine's load when they ended (others share it)."""
    bundle = fleet.hub.bundle(root / f"sim-{time.time_ns()}.spoke", "--max-uses", str(count))
    creds = root / f"creds-{time.time_ns()}"
    payload = claim_creds(bundle, creds)
    devices = [SimulatedDevice(payload, creds) for _ in range(count)]
    before = cpu_seconds(fleet, pg_datadir)
    rate = await enroll_all(devices, 32)
    after = cpu_seconds(fleet, pg_datadir)
    return {
        "per_minute": rate,
        "cpu_ms_per_enrollment": {k: round(1000 * (after[k] - before[k]) / count, 1)
                                  for k in after},
        "load_average_1m": os.getloadavg()[0],
    }


def cpu_seconds(
    fleet: HubFleet, pg_datadir: Path, sim: LiteFleet | None = None
) -> dict[str, float]:
    """CPU time used so far by each part of the bench: hub processes, broker, PostgreSQL (the
    postmaster and its backends), and the simulated devices (this process and ``sim``'s
    workers)."""
    postmaster = int((pg_datadir / "postmaster.pid").read_text().split()[0])
    groups = {
        "hubs": [p.proc.pid for p in fleet.hubs],
        "broker": [fleet.broker.proc.pid],
        "postgres": [postmaster, *(c.pid for c in psutil.Process(postmaster).children())],
        "simulated_devices": [os.getpid(), *(sim.pids() if sim else [])],
    }
    used: dict[str, float] = {}
    for name, pids in groups.items():
        used[name] = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                used[name] += t.user + t.system
    with contextlib.suppress(psutil.Error):
        # Backends that ended (a killed hub's connections) count in their parent's total.
        t = psutil.Process(postmaster).cpu_times()
        used["postgres"] += t.children_user + t.children_system
    return used


async def settle(url: str, acked: Acked, since: float) -> list[float]:
    """Wait until every acknowledged report is stored, or none has been for ``QUIET_S``
    (what is still missing then is lost, not late); return the missing ones."""
    missing = missing_reports(url, acked, since)
    progress = time.time()
    while missing and time.time() < progress + QUIET_S:
        await asyncio.sleep(2)
        still = missing_reports(url, acked, since)
        if len(still) < len(missing):
            progress = time.time()
        missing = still
    return missing


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


async def ingest(
    fleet: HubFleet, url: str, pg_datadir: Path, sim: LiteFleet,
    args: argparse.Namespace, kill: Process | None = None,
) -> dict[str, Any]:
    """Every device reports every ``--interval`` s for ``--duration`` s; ``kill`` is killed
    halfway. Waits for every acknowledged report to be stored (``settle``)."""
    snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")
    cpu_before = cpu_seconds(fleet, pg_datadir, sim)
    start = time.time() + 1  # the workers get the part first
    reporting = asyncio.ensure_future(
        sim.run(Part(start, args.interval, start + args.duration, snapshot))
    )
    failover: dict[str, Any] = {}
    if kill is not None:
        await asyncio.sleep(args.duration / 2)
        kill.proc.kill()
        killed_at = time.time()
        survivors = [p for p in fleet.hubs if p is not kill]
        failover = await watch_failover(url, survivors, "hub-0", killed_at)
    acked, reconnects = await reporting
    missing = await settle(url, acked, start)
    wall = time.time() - start
    cpu_after = cpu_seconds(fleet, pg_datadir, sim)
    cpu = {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after}
    lags = ingest_lag(url, start)
    sent = sum(len(times) for times in acked.values())
    result: dict[str, Any] = {
        "devices": len(acked),
        "interval_s": args.interval,
        "duration_s": args.duration,
        "reports_due": int(len(acked) * (args.duration // args.interval
                                          + (args.duration % args.interval > 0))),
        "reports_sent": sent,
        "reports_stored": len(lags),
        "reports_lost": len(missing),
        "duplicate_rows": duplicate_rows(url, start),
        "device_reconnects": reconnects,
        "lag_p50_s": percentile(lags, 50) if lags else None,
        "lag_p99_s": percentile(lags, 99) if lags else None,
        "lag_max_s": max(lags) if lags else None,
        "load_average_1m": os.getloadavg()[0],
        "wall_s": round(wall, 1),
        "cpu_s": cpu,
        # CPU milliseconds per report sent, per part: what the machine's load does not change.
        "cpu_ms_per_report": {k: round(1000 * v / max(1, sent), 2) for k, v in cpu.items()},
        "cores_busy": round(sum(cpu.values()) / wall, 2),
    }
    if kill is not None:
        after = ingest_lag(url, killed_at)
        result |= failover | {
            "lost_sent_after_kill_s": [round(t - killed_at, 3) for t in missing],
            "after_kill_lag_p99_s": percentile(after, 99) if after else None,
            "after_kill_lag_max_s": max(after) if after else None,
        }
    return result


async def run_fleet(
    root: Path, url: str, pg_datadir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    fleet = HubFleet(root, url)
    try:
        first = fleet.start_hub("hub-0")
        wait_for(lambda: LEADS in first.output(), 60, "hub-0 to lead")
        one: dict[str, Any] = {"processes": 1}
        one["enrollments"] = await enrollment_rate(fleet, root, pg_datadir, args.enroll)
        sim = None
        if not args.enroll_only:
            sim = await connect_fleet(fleet, args)
            one["connections"] = sim_up = sim.up
            print(f"ingest, 1 process ({sim_up})", file=sys.stderr, flush=True)
            one["ingest"] = await ingest(fleet, url, pg_datadir, sim.fleet, args)
        for i in range(1, args.processes):
            fleet.start_hub(f"hub-{i}")
        await asyncio.sleep(10)  # past the new processes' start-up work
        several: dict[str, Any] = {"processes": len(fleet.hubs)}
        several["enrollments"] = await enrollment_rate(fleet, root, pg_datadir, args.enroll)
        if sim is None:
            return {"one": one, "several": several}
        print(f"ingest, {len(fleet.hubs)} processes", file=sys.stderr, flush=True)
        several["ingest"] = await ingest(fleet, url, pg_datadir, sim.fleet, args)
        print("ingest, the leading process killed halfway", file=sys.stderr, flush=True)
        several["killed_under_load"] = await ingest(
            fleet, url, pg_datadir, sim.fleet, args, kill=first
        )
        return {"one": one, "several": several}
    finally:
        if sim is not None:
            sim.fleet.close()
        fleet.close()


class Connected:
    """The light fleet with its connections up, and what bringing them up took."""

    def __init__(self, fleet: LiteFleet, up: dict[str, Any]) -> None:
        self.fleet = fleet
        self.up = up


async def connect_fleet(fleet: HubFleet, args: argparse.Namespace) -> Connected:
    print(f"setting up {args.devices} devices", file=sys.stderr, flush=True)
    devices = fleet.enrolled_devices(args.devices)
    where = Address("localhost", fleet.hub.mqtt_port, fleet.home.ca_cert, args.connect_rate)
    started = time.time()
    sim = LiteFleet([Spec(d.device_id, d.cert, d.key) for d in devices], where,
                    args.sim_processes)
    failed = await asyncio.to_thread(sim.wait_up)
    return Connected(sim, {
        "devices": len(devices), "failed": failed, "seconds": round(time.time() - started, 1),
        "load_average_1m": os.getloadavg()[0],
    })


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with postgres.cluster() as cluster:
        url = cluster.create_database("bench_fleet")
        if args.keep:
            args.keep.mkdir(parents=True)
            results = asyncio.run(run_fleet(args.keep, url, cluster.datadir, args))
        else:
            with tempfile.TemporaryDirectory(prefix="spoke-bench-hubscale-") as tmp:
                results = asyncio.run(run_fleet(Path(tmp), url, cluster.datadir, args))
        print(f"enrollment cost at 10 and {args.enrolled}", file=sys.stderr, flush=True)
        urls = (cluster.create_database("cost_small"), cluster.create_database("cost_large"))
        results["enrollment_cost"] = enrollment_cost(urls, (10, args.enrolled), args.samples)
    one, several = results["one"], results["several"]
    rates = one["enrollments"]["per_minute"], several["enrollments"]["per_minute"]
    results["enrollment_ratio"] = rates[1] / rates[0]
    if "ingest" in one:
        p99 = one["ingest"]["lag_p99_s"], several["ingest"]["lag_p99_s"]
        results["ingest_p99_ratio"] = p99[1] / p99[0] if p99[0] and p99[1] else None
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3, help="hub processes, 2 or more")
    parser.add_argument("--devices", type=int, default=2000, help="devices reporting health")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--enroll", type=int, default=200, help="devices enrolling, per part")
    parser.add_argument("--enrolled", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200, help="enrollments timed per fleet")
    parser.add_argument("--sim-processes", type=int, default=2,
                        help="worker processes holding the simulated devices' connections")
    parser.add_argument("--connect-rate", type=float, default=200.0,
                        help="simulated devices' connections made per second, in all")
    parser.add_argument("--enroll-only", action="store_true",
                        help="only the enrollment rates and cost, no ingest")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the fleet's logs under this new folder")
    args = parser.parse_args()
    if args.processes < 2:
        parser.error("--processes: at least 2 (one is the baseline, and one is killed)")
    if not postgres.available():
        print("bench_hubscale: PostgreSQL is not installed (scripts/setup.sh installs it)",
              file=sys.stderr)
        raise SystemExit(2)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.devices + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * args.devices + 1000), hard))
    results = bench(args)
    print(json.dumps(results, indent=2) if args.json else "\n".join(
        f"{k}: {v}" for k, v in results.items()
    ))


if __name__ == "__main__":
    main()
