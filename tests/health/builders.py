"""Hand-built snapshots for the pure parts (alerts, metrics): every value chosen by the test."""

from typing import Any

from appliance.health import (
    CpuStats,
    DaemonFacts,
    FilesystemStats,
    GpuSection,
    GpuStats,
    HealthSnapshot,
    HostStats,
    MemoryStats,
    ProcessStats,
)

GIB = 1024**3
NOW = 1_800_000_000.0


def filesystem(mountpoint: str = "/", used_ratio: float = 0.5) -> FilesystemStats:
    total = 100 * GIB
    used = int(total * used_ratio)
    return FilesystemStats(
        mountpoint=mountpoint,
        device="/dev/vda1",
        fstype="ext4",
        total_bytes=total,
        used_bytes=used,
        free_bytes=total - used,
    )


def gpu(index: int = 0, **fields: Any) -> GpuStats:
    values: dict[str, Any] = {
        "index": index,
        "name": "FAKE NVIDIA A2",
        "uuid": f"GPU-fake-{index}",
        "temperature_celsius": 50.0,
        "temperature_slowdown_celsius": 90.0,
        "ecc_uncorrected_errors": 0,
    }
    values.update(fields)
    return GpuStats(**values)


def snapshot(
    *,
    filesystems: list[FilesystemStats] | None = None,
    memory_available_ratio: float = 0.5,
    gpu_section: GpuSection | None = None,
    daemon: DaemonFacts | None = None,
    taken_at_s: float = NOW,
    faults: list[str] | None = None,
) -> HealthSnapshot:
    total = 8 * GIB
    available = int(total * memory_available_ratio)
    return HealthSnapshot(
        taken_at_s=taken_at_s,
        collect_duration_s=0.01,
        host=HostStats(
            cpu=CpuStats(usage_ratio_per_core=[0.1, 0.2], load_1m=0.5, load_5m=0.4, load_15m=0.3),
            memory=MemoryStats(
                total_bytes=total,
                available_bytes=available,
                used_bytes=total - available,
                swap_total_bytes=0,
                swap_used_bytes=0,
            ),
            filesystems=[filesystem()] if filesystems is None else filesystems,
            disks=[],
            networks=[],
            temperatures=[],
            fans=[],
            boot_time_s=NOW - 3600,
            uptime_s=3600.0,
        ),
        process=ProcessStats(
            pid=1234,
            resident_memory_bytes=100 * 1024**2,
            open_fds=12,
            threads=4,
            cpu_seconds=1.5,
            start_time_s=NOW - 60,
        ),
        gpu=gpu_section or GpuSection(status="ok", gpus=[gpu()]),
        daemon=daemon or DaemonFacts(last_hub_contact_s=NOW - 5),
        faults=faults or [],
    )
