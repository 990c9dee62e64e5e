"""psutil collectors: host and daemon-process readings for one snapshot.

Every call here may block on /proc or /sys, so the service runs ``collect()`` in a worker
thread. A section that fails (a sensor driver erroring, a mount vanishing mid-read) becomes a
fault string in the snapshot and an empty section, never an exception that loses the rest.
"""

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

from appliance.health import (
    CpuStats,
    DiskIOStats,
    FanReading,
    FilesystemStats,
    HostStats,
    MemoryStats,
    NetworkStats,
    ProcessStats,
    TemperatureReading,
)

T = TypeVar("T")

# Block devices that are not disks: their counters are noise on a dashboard.
_SKIP_DISK_PREFIXES = ("loop", "ram", "zram")


class HostCollector:
    """Collects host and process stats; keeps the previous CPU times to compute usage.

    CPU usage is computed from our own ``cpu_times`` deltas rather than ``psutil.cpu_percent``,
    whose hidden module-level state any other caller in the process would reset.
    """

    def __init__(self, process: psutil.Process | None = None) -> None:
        self._process = process or psutil.Process(os.getpid())
        # No previous reading: the first snapshot reports the average since boot, not 0.
        self._prev_cpu: list[Any] | None = None

    def collect(self) -> tuple[HostStats, ProcessStats, list[str]]:
        faults: list[str] = []
        host = HostStats(
            cpu=self._cpu(),
            memory=memory_stats(),
            filesystems=_guard("filesystems", filesystem_stats, faults),
            disks=_guard("disk I/O", disk_io_stats, faults),
            networks=_guard("network", network_stats, faults),
            temperatures=_guard("temperatures", temperature_readings, faults),
            fans=_guard("fans", fan_readings, faults),
            boot_time_s=psutil.boot_time(),
            uptime_s=max(0.0, time.time() - psutil.boot_time()),
        )
        return host, process_stats(self._process), faults

    def _cpu(self) -> CpuStats:
        now = psutil.cpu_times(percpu=True)
        before = self._prev_cpu or [None] * len(now)
        # strict=False: a CPU hot-plugged between two cycles has no previous reading yet.
        ratios = [_busy_ratio(b, a) for b, a in zip(before, now, strict=False)]
        self._prev_cpu = now
        load_1m, load_5m, load_15m = psutil.getloadavg()
        return CpuStats(
            usage_ratio_per_core=ratios, load_1m=load_1m, load_5m=load_5m, load_15m=load_15m
        )


def _guard(section: str, read: Callable[[], list[T]], faults: list[str]) -> list[T]:
    try:
        return read()
    except (OSError, RuntimeError) as exc:
        faults.append(f"{section}: {exc}")
        return []


def _total_time(times: Any) -> float:
    # guest time is already counted in user/nice on Linux: do not count it twice.
    return float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _idle_time(times: Any) -> float:
    return float(times.idle + getattr(times, "iowait", 0.0))


def _busy_ratio(before: Any | None, after: Any) -> float:
    total, idle = _total_time(after), _idle_time(after)
    if before is not None:
        total -= _total_time(before)
        idle -= _idle_time(before)
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (total - idle) / total))


def memory_stats() -> MemoryStats:
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return MemoryStats(
        total_bytes=vm.total,
        available_bytes=vm.available,
        used_bytes=vm.total - vm.available,
        swap_total_bytes=swap.total,
        swap_used_bytes=swap.used,
    )


def filesystem_stats() -> list[FilesystemStats]:
    """Usage of every mounted physical filesystem; one that vanishes mid-read is skipped."""
    result = []
    for part in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue
        result.append(
            FilesystemStats(
                mountpoint=part.mountpoint,
                device=part.device,
                fstype=part.fstype,
                total_bytes=usage.total,
                used_bytes=usage.used,
                free_bytes=usage.free,
            )
        )
    return result


def disk_io_stats() -> list[DiskIOStats]:
    counters = psutil.disk_io_counters(perdisk=True) or {}
    return [
        DiskIOStats(
            device=name,
            read_bytes=c.read_bytes,
            written_bytes=c.write_bytes,
            reads_completed=c.read_count,
            writes_completed=c.write_count,
        )
        for name, c in sorted(counters.items())
        if not name.startswith(_SKIP_DISK_PREFIXES)
    ]


def network_stats() -> list[NetworkStats]:
    counters = psutil.net_io_counters(pernic=True) or {}
    return [
        NetworkStats(
            interface=name,
            received_bytes=c.bytes_recv,
            transmitted_bytes=c.bytes_sent,
            received_packets=c.packets_recv,
            transmitted_packets=c.packets_sent,
            receive_errors=c.errin,
            transmit_errors=c.errout,
            receive_drops=c.dropin,
            transmit_drops=c.dropout,
        )
        for name, c in sorted(counters.items())
        if name != "lo"
    ]


def temperature_readings() -> list[TemperatureReading]:
    """Kernel hwmon temperatures; empty where the kernel exposes none (VMs, containers)."""
    if not hasattr(psutil, "sensors_temperatures"):
        return []
    return temperatures_from_psutil(psutil.sensors_temperatures())


def temperatures_from_psutil(sensors: dict[str, list[Any]]) -> list[TemperatureReading]:
    return [
        TemperatureReading(
            chip=chip,
            label=entry.label or f"temp{i + 1}",
            celsius=entry.current,
            high_celsius=entry.high,
            critical_celsius=entry.critical,
        )
        for chip, entries in sorted(sensors.items())
        for i, entry in enumerate(entries)
    ]


def fan_readings() -> list[FanReading]:
    if not hasattr(psutil, "sensors_fans"):
        return []
    return fans_from_psutil(psutil.sensors_fans())


def fans_from_psutil(fans: dict[str, list[Any]]) -> list[FanReading]:
    return [
        FanReading(chip=chip, label=entry.label or f"fan{i + 1}", rpm=entry.current)
        for chip, entries in sorted(fans.items())
        for i, entry in enumerate(entries)
    ]


def process_stats(process: psutil.Process) -> ProcessStats:
    with process.oneshot():
        cpu = process.cpu_times()
        return ProcessStats(
            pid=process.pid,
            resident_memory_bytes=process.memory_info().rss,
            open_fds=process.num_fds(),
            threads=process.num_threads(),
            cpu_seconds=cpu.user + cpu.system,
            start_time_s=process.create_time(),
        )
