"""``make soak DURATION=30m``: a fleet under steady load and random faults, then the books.

Five appliances (``--appliances``), each in its own network namespace, take a steady drone
uplink (one image every ``--period`` seconds each) and report health every 10 s. Midway a new
model version rolls out; a little later one appliance fine-tunes that model on site samples
and promotes the result, so the books end with a locally promoted model on that box. Faults
are drawn at random from a printed seed (``--seed`` repeats a run): hub link cut, 30 % loss
with jitter, hub killed -9 and restarted, broker killed, hub redeployed, appliance power cut.
Every 10 s the soak samples resident memory and open file descriptors of each daemon (with
its workers) and of the hub (with its broker), queue depths, and /healthz latency; memory and
fds are kept for the mean daemon and for each box. At the end it reconciles every image and
event (tests/faults/harness.py) and prints one JSON summary: the leak slope after warm-up
(MiB/h and fds/h, least squares), p99 of /healthz and of image processing, each fault with its
recovery time, the fine-tune's outcome, and the books.

Needs root (network namespaces) and nft; not part of CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.faults.harness import Box, FaultFleet, Uplink, fleet_artifacts
from tests.support.netns import Fabric
from tests.support.wait import wait_for

FAULTS = ("link-cut", "loss", "hub-kill", "broker-kill", "hub-redeploy", "power-cut")
SOAK_ENV = {"SPOKE_HEALTH__INTERVAL_S": "10"}


def duration(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def usage(pid: int) -> tuple[float, int]:
    """Resident MiB and open fds of a process and its descendants."""
    rss, fds = 0.0, 0
    for p in tree(pid):
        try:
            rss += p.memory_info().rss / 2**20
            fds += p.num_fds()
        except psutil.Error:
            continue
    return rss, fds


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), per hour; None with under 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0


def p99(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=100)[98], 4) if len(values) >= 2 else None


@dataclass
class Samples:
    """Time series, by process kind, each point (seconds since start, value)."""

    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    fds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    queue: list[tuple[float, float]] = field(default_factory=list)
    outbox: list[tuple[float, float]] = field(default_factory=list)
    healthz_s: list[float] = field(default_factory=list)

    def add(self, kind: str, t: float, rss: float, fds: int) -> None:
        self.rss.setdefault(kind, []).append((t, rss))
        self.fds.setdefault(kind, []).append((t, float(fds)))


class Soak:
    def __init__(self, fleet: FaultFleet, rng: random.Random, period: float) -> None:
        self.fleet = fleet
        self.rng = rng
        self.period = period
        self.samples = Samples()
        self.faults: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.finetune: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self._stop = threading.Event()

    def sample_forever(self) -> None:
        while not self._stop.wait(10):
            t = time.monotonic() - self.t0
            rss, fds, queue, outbox = 0.0, 0, 0, 0
            for box in self.fleet.boxes:
                proc = box.appliance.process
                if proc is not None:
                    r, f = usage(proc.pid)
                    rss, fds = rss + r, fds + f
                    # Each box on its own as well: a one-off step on one box (a restart, a
                    # library loaded once) then does not read as every daemon's trend.
                    self.samples.add(box.appliance.state_dir.name, t, r, f)
                started = time.monotonic()
                if box.healthy():
                    self.samples.healthz_s.append(time.monotonic() - started)
                queue += _count(box, "uplink/results.db",
                                "SELECT COUNT(*) FROM images WHERE status IN ('queued','running')")
                outbox += _count(box, "outbox.db", "SELECT COUNT(*) FROM outbox")
            n = max(1, len(self.fleet.boxes))
            self.samples.add("daemon", t, rss / n, fds // n)
            hub = self.fleet.hub.process
            if hub is not None:
                self.samples.add("hub", t, *usage(hub.pid))
            self.samples.queue.append((t, queue))
            self.samples.outbox.append((t, outbox))

    def inject(self, kind: str) -> None:
        """One fault, then wait for green; records the recovery time."""
        box = self.rng.choice(self.fleet.boxes)
        link = box.appliance.link
        assert link is not None
        hold = self.rng.uniform(20, 90)
        started = time.monotonic()
        if kind == "link-cut":
            link.cut_hub(self.fleet.fabric.hub_addr)
            time.sleep(hold)
            link.restore_hub()
        elif kind == "loss":
            self.fleet.degrade(box, 0.3, 500)
            time.sleep(hold)
            link.heal()
        elif kind == "hub-kill":
            self.fleet.hub.kill()
            time.sleep(5)
            self.fleet.hub.start()
        elif kind == "broker-kill":
            os.kill(self.fleet.hub.broker_pid(), 9)
        elif kind == "hub-redeploy":
            self.fleet.hub.stop()
            self.fleet.hub.start()
        elif kind == "power-cut":
            box.appliance.power_cut()
            self.fleet.restart(box)
        end = time.monotonic()
        recovery = self.fleet.wait_recovered(end)
        self.faults.append({"fault": kind, "box": box.appliance.state_dir.name,
                            "at_s": round(started - self.t0), "held_s": round(end - started, 1),
                            "recovery_s": recovery})
        print(f"soak: {kind} on {box.appliance.state_dir.name} held {end - started:.0f} s, "
              f"green again after {recovery} s", flush=True)

    def attempt(self, what: str, step: Callable[[], None]) -> None:
        """A step the soak survives: if the machine is too loaded for it (a CLI timing out, a
        box not green within the wait), that is recorded and the soak goes on."""
        try:
            step()
            print(f"soak: {what} done", flush=True)
        except (AssertionError, subprocess.SubprocessError, OSError) as exc:
            self.failures.append({"step": what, "at_s": round(time.monotonic() - self.t0),
                                  "error": str(exc)[:300]})
            print(f"soak: {what} did not complete: {str(exc)[:200]}", flush=True)

    def start_finetune(self) -> None:
        """Queue a fine-tune on one box (at random); ``finish_finetune`` collects its outcome."""
        box = self.rng.choice(self.fleet.boxes)
        job = self.fleet.start_finetune(box)
        self.finetune = {"box": box.appliance.state_dir.name, "job": job,
                         "at_s": round(time.monotonic() - self.t0)}

    def finish_finetune(self, timeout: float = 900) -> None:
        """Wait for the fine-tune's outcome at the hub; record it with how long it took."""
        if not self.finetune:
            return
        box = next(b for b in self.fleet.boxes
                   if b.appliance.state_dir.name == self.finetune["box"])
        event = wait_for(lambda: self.fleet.finetune_outcome(box, self.finetune["job"]),
                         timeout, "the fine-tune's outcome at the hub")
        data = event["data"]
        promotion = data.get("promotion") or {}
        self.finetune |= {"outcome": event["kind"], "promotion": promotion.get("state"),
                          "version": promotion.get("version"),
                          "macro_f1": [data.get("macro_f1_current"),
                                       data.get("macro_f1_candidate")],
                          "finished_at_s": round(event["received_at"] - self.wall0)}
        if promotion.get("state") == "activated":
            self.fleet.hub.wait_model(box.device_id, promotion["version"], timeout=300)

    def run(self, seconds: float, rollout_version: str | None) -> None:
        sampler = threading.Thread(target=self.sample_forever, daemon=True)
        sampler.start()
        loads = [Uplink(box, self.period) for box in self.fleet.boxes]
        for load in loads:
            load.__enter__()
        deadline = self.t0 + seconds
        rolled = rollout_version is None
        tuned = False
        try:
            while time.monotonic() < deadline - 60:
                time.sleep(self.rng.uniform(20, 60))
                if not rolled and time.monotonic() > self.t0 + seconds / 2:
                    assert rollout_version is not None
                    rolled = True
                    self.attempt("rollout", functools.partial(self.fleet.publish, rollout_version))
                    continue
                if rolled and not tuned and time.monotonic() > self.t0 + seconds * 0.6:
                    tuned = True
                    self.attempt("fine-tune started", self.start_finetune)
                    continue
                if time.monotonic() < deadline - 120:
                    kind = self.rng.choice(FAULTS)
                    self.attempt(kind, functools.partial(self.inject, kind))
        finally:
            for load in loads:
                load.__exit__(None, None, None)
            self._stop.set()
            sampler.join(30)

    def summary(self, books: Any) -> dict[str, Any]:
        warm = [t for t, _ in self.samples.queue]
        cutoff = warm[len(warm) // 5] if warm else 0  # the first fifth is warm-up
        leaks = {}
        for kind in self.samples.rss:
            rss = [p for p in self.samples.rss[kind] if p[0] >= cutoff]
            fds = [p for p in self.samples.fds[kind] if p[0] >= cutoff]
            leaks[kind] = {
                "rss_mib_first": round(rss[0][1], 1) if rss else None,
                "rss_mib_last": round(rss[-1][1], 1) if rss else None,
                "rss_slope_mib_per_h": _round(slope_per_hour(rss)),
                "fds_first": fds[0][1] if fds else None, "fds_last": fds[-1][1] if fds else None,
                "fds_slope_per_h": _round(slope_per_hour(fds)),
            }
        processing = []
        for box in self.fleet.boxes:
            processing += _processing_seconds(box)
        return {
            "duration_s": round(time.monotonic() - self.t0),
            "appliances": len(self.fleet.boxes),
            "leaks_after_warmup": leaks,
            "queue_depth_max": max((v for _, v in self.samples.queue), default=0),
            "outbox_depth_max": max((v for _, v in self.samples.outbox), default=0),
            "healthz_p99_s": p99(self.samples.healthz_s),
            "image_processing_p99_s": p99(processing),
            "faults": self.faults,
            "finetune": self.finetune,
            "steps_not_completed": self.failures,
            "books": books.row(),
            "problems": books.problems(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _count(box: Box, rel: str, sql: str) -> int:
    try:
        rows = box.appliance.query(rel, sql)
    except sqlite3.Error:  # a database being created or locked at that moment
        return 0
    return int(rows[0][0]) if rows else 0


def _processing_seconds(box: Box) -> list[float]:
    """Received to finished, for every processed image of this box."""
    return [r[0] for r in box.appliance.query(
        "uplink/results.db", "SELECT finished_at - received_at FROM images WHERE status = 'done'")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=duration, default=duration("30m"))
    parser.add_argument("--appliances", type=int, default=5)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between images")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"soak: seed {seed} (repeat with --seed {seed}), {args.appliances} appliances, "
          f"{args.duration:.0f} s", flush=True)
    root = Path(tempfile.mkdtemp(prefix="spoke-soak-"))
    artifacts = fleet_artifacts(root / "artifacts")
    fabric = Fabric()
    fleet = FaultFleet(root, fabric, artifacts, size=args.appliances, env=SOAK_ENV)
    try:
        fleet.start()
        print(f"soak: fleet up in {root}", flush=True)
        soak = Soak(fleet, random.Random(seed), args.period)
        soak.run(args.duration, "1.1.0")
        soak.attempt("fine-tune finished", soak.finish_finetune)
        books = fleet.reconcile("soak", max((f["recovery_s"] for f in soak.faults), default=0))
        result = {"seed": seed, **soak.summary(books)}
    finally:
        fleet.close()
        fabric.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
