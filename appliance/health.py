"""The health wire schema: the snapshot and the alert events the hub receives.

``HealthSnapshot`` is one typed, JSON-serialisable picture of the appliance at one moment: it
goes out on ``spoke/v1/{device}/health`` and is what the alert evaluator reads. ``AlertEvent``
is one raise or clear transition, for ``spoke/v1/{device}/events``. This module needs only
pydantic, so the hub can parse both with the same models (``model_validate_json``). Units are base
units spelled in the field name: bytes, seconds, ratios (0..1), degrees Celsius, watts, hertz.
Counters from the kernel (disk and network I/O) are cumulative since boot; rates are the
reader's business (Prometheus ``rate()``), so a missed report loses nothing.
"""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuStats(_Model):
    usage_ratio_per_core: list[float]
    load_1m: float
    load_5m: float
    load_15m: float


class MemoryStats(_Model):
    total_bytes: int
    available_bytes: int
    used_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int

    @property
    def available_ratio(self) -> float:
        return self.available_bytes / self.total_bytes if self.total_bytes else 1.0


class FilesystemStats(_Model):
    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def used_ratio(self) -> float:
        """Used over what an unprivileged writer can get (what ``df`` prints as Use%)."""
        usable = self.used_bytes + self.free_bytes
        return self.used_bytes / usable if usable else 0.0


class DiskIOStats(_Model):
    device: str
    read_bytes: int
    written_bytes: int
    reads_completed: int
    writes_completed: int


class NetworkStats(_Model):
    interface: str
    received_bytes: int
    transmitted_bytes: int
    received_packets: int
    transmitted_packets: int
    receive_errors: int
    transmit_errors: int
    receive_drops: int
    transmit_drops: int


class TemperatureReading(_Model):
    chip: str
    label: str
    celsius: float
    high_celsius: float | None = None
    critical_celsius: float | None = None


class FanReading(_Model):
    chip: str
    label: str
    rpm: float


class HostStats(_Model):
    cpu: CpuStats
    memory: MemoryStats
    filesystems: list[FilesystemStats]
    disks: list[DiskIOStats]
    networks: list[NetworkStats]
    temperatures: list[TemperatureReading]
    fans: list[FanReading]
    boot_time_s: float
    uptime_s: float


class ProcessStats(_Model):
    """The daemon's own footprint: a leak shows here long before the OOM killer."""

    pid: int
    resident_memory_bytes: int
    open_fds: int
    threads: int
    cpu_seconds: float
    start_time_s: float


class GpuEvent(_Model):
    """A critical NVML event (Xid, ECC, GPU unavailable...) seen since the previous snapshot."""

    gpu_index: int
    type: str
    xid: int | None = None
    data: int


class GpuStats(_Model):
    """One NVIDIA GPU. ``None`` means NVML does not support that reading on this board."""

    index: int
    name: str
    uuid: str
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    temperature_slowdown_celsius: float | None = None
    temperature_shutdown_celsius: float | None = None
    power_draw_watts: float | None = None
    power_limit_watts: float | None = None
    clock_sm_hertz: float | None = None
    clock_memory_hertz: float | None = None
    throttle_reasons: list[str] = Field(default_factory=list)
    ecc_corrected_errors: int | None = None
    ecc_uncorrected_errors: int | None = None
    pcie_link_generation: int | None = None
    pcie_link_width: int | None = None
    fan_speed_ratio: float | None = None


GpuStatus = Literal["ok", "absent", "unavailable", "fault"]


class GpuSection(_Model):
    """``ok``: readings below. ``absent``: NVML works but sees no GPU. ``unavailable``: no NVML
    (library or driver missing) — both plain facts, not errors. ``fault``: a health fault:
    NVML worked earlier in this run and now fails or sees its GPUs gone ("NVML lost: ..."),
    or it is installed but broken, such as a library/driver mismatch ("NVML failed: ...")."""

    status: GpuStatus
    message: str = ""
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[GpuStats] = Field(default_factory=list)
    events: list[GpuEvent] = Field(default_factory=list)


class ActiveModel(_Model):
    name: str
    version: str


class DaemonFacts(_Model):
    """What the daemon knows about itself; provided by the daemon, not collected from the OS."""

    active_model: ActiveModel | None = None
    last_hub_contact_s: float | None = None  # a Unix timestamp
    queue_depths: dict[str, int] = Field(default_factory=dict)
    outbox_depth: int = 0


class HealthSnapshot(_Model):
    schema_version: int = SCHEMA_VERSION
    taken_at_s: float
    collect_duration_s: float
    host: HostStats
    process: ProcessStats
    gpu: GpuSection
    daemon: DaemonFacts = DaemonFacts()
    faults: list[str] = Field(default_factory=list)


class Severity(StrEnum):
    """How urgent an alert is: ``critical`` needs someone at the box soon."""

    WARNING = "warning"
    CRITICAL = "critical"


class AlertEvent(_Model):
    """One transition, published once: ``raised`` when crossed, ``cleared`` when recovered."""

    alert: str
    subject: str
    state: Literal["raised", "cleared"]
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    at_s: float
