"""Benchmark the health collection cycle: wall milliseconds and CPU per cycle, and CPU % of one
core the health service costs at a given interval.

    .venv/bin/python -m scripts.bench_health [--cycles 200] [--service-seconds 60]

A cycle is what HealthService does every interval minus the network: psutil and NVML readings,
the metrics update, alert evaluation and JSON serialisation of the snapshot. NVML is the real
one when present; without a GPU the NVML part costs one "unavailable" check, and the output
says so. The service figures run the real HealthService with a publish that only serialises.
"""

import argparse
import asyncio
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from appliance.config import HealthSection
from appliance.health import AlertEvent, DaemonFacts, HealthSnapshot
from daemon.health.alerts import AlertEvaluator
from daemon.health.metrics import DaemonMetrics
from daemon.health.sampler import Sampler
from daemon.health.service import HealthService


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class CycleCost:
    wall_ms_median: float
    wall_ms_p95: float
    cpu_ms_mean: float
    render_ms: float
    gpu_status: str
    gpus: int


def bench_cycles(cycles: int) -> CycleCost:
    """Wall and CPU milliseconds of ``cycles`` back-to-back collection cycles."""
    sampler, metrics = Sampler(), DaemonMetrics()
    evaluator = AlertEvaluator(HealthSection())
    sampler.sample(DaemonFacts())  # warm-up: imports, NVML init, first psutil reads
    wall_ms, cpu_ms = [], []
    for _ in range(cycles):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        snapshot = sampler.sample(DaemonFacts())
        metrics.update_from_snapshot(snapshot)
        evaluator.evaluate(snapshot)
        snapshot.model_dump_json()
        wall_ms.append((time.perf_counter() - wall0) * 1000)
        cpu_ms.append((time.process_time() - cpu0) * 1000)
    render0 = time.perf_counter()
    metrics.exposition()
    render_ms = (time.perf_counter() - render0) * 1000
    gpu = sampler.gpu.read()
    sampler.close()
    return CycleCost(
        wall_ms_median=statistics.median(wall_ms),
        wall_ms_p95=statistics.quantiles(wall_ms, n=20)[-1],
        cpu_ms_mean=statistics.fmean(cpu_ms),
        render_ms=render_ms,
        gpu_status=gpu.status,
        gpus=len(gpu.gpus),
    )


async def bench_service(interval_s: float, seconds: float) -> float:
    """CPU % of one core used by this process while HealthService runs at ``interval_s``."""

    async def publish(snapshot: HealthSnapshot, events: list[AlertEvent]) -> None:
        snapshot.model_dump_json()

    service = HealthService(HealthSection(interval_s=interval_s), publish)
    await service.start()
    # process_time has nanosecond resolution; psutil's cpu_times counts 10 ms clock ticks.
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    await service.stop()
    return 100 * (cpu1 - cpu0) / (wall1 - wall0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument(
        "--service-seconds", type=float, default=60.0, help="0 skips the service run"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # alerts raised on this box are not the result
    cost = bench_cycles(args.cycles)
    print(f"CPU: {cpu_model()} ({psutil.cpu_count()} logical CPUs)")
    print(f"GPU: NVML {cost.gpu_status}, {cost.gpus} GPU(s)")
    print(
        f"one cycle ({args.cycles} runs): wall median {cost.wall_ms_median:.2f} ms, "
        f"p95 {cost.wall_ms_p95:.2f} ms; CPU {cost.cpu_ms_mean:.2f} ms"
    )
    for interval in (1.0, 10.0, 30.0):
        share = cost.cpu_ms_mean / (interval * 1000) * 100
        print(f"  => {share:.3f} % of one core at a {interval:g} s interval")
    print(f"/metrics render: {cost.render_ms:.2f} ms")
    if args.service_seconds > 0:
        for interval in (1.0, 30.0):
            share = asyncio.run(bench_service(interval, args.service_seconds))
            print(
                f"HealthService every {interval:g} s, measured over {args.service_seconds:g} s: "
                f"{share:.3f} % of one core"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
