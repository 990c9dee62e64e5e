"""One collection cycle: psutil and NVML readings plus the daemon's facts, as one snapshot.

Blocking by nature (``/proc``, ``/sys``, NVML ioctls): call it from a worker thread.
"""

import time

from appliance.health import DaemonFacts, HealthSnapshot
from daemon.health.collectors import HostCollector
from daemon.health.nvml import NvmlReader


class Sampler:
    """Owns the stateful readers (CPU deltas, the NVML session) between cycles."""

    def __init__(self, host: HostCollector | None = None, gpu: NvmlReader | None = None) -> None:
        self.host = host or HostCollector()
        self.gpu = gpu or NvmlReader()

    def sample(self, facts: DaemonFacts) -> HealthSnapshot:
        started = time.perf_counter()
        taken_at = time.time()
        host, process, faults = self.host.collect()
        gpu = self.gpu.read()
        if gpu.status == "fault":
            faults.append(f"gpu: {gpu.message}")
        return HealthSnapshot(
            taken_at_s=taken_at,
            collect_duration_s=time.perf_counter() - started,
            host=host,
            process=process,
            gpu=gpu,
            daemon=facts,
            faults=faults,
        )

    def close(self) -> None:
        self.gpu.close()
