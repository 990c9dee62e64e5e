"""Prometheus metrics for the daemon, in a registry of its own.

Two kinds live here. Instruments the daemon updates as things happen (queue depths, inference
latency and batch sizes, the active model, the outbox, hub contact, dropped inputs) are plain
prometheus-client objects on ``DaemonMetrics``. Host and GPU readings are rendered at scrape
time from the latest snapshot by a custom collector, so a filesystem that is unmounted or a GPU
that is gone disappears from ``/metrics`` instead of freezing at its last value, and kernel
counters are exposed as counters (``_total``) rather than gauges.

Names follow Prometheus conventions: a ``spoke_`` prefix, base units in the name (seconds,
bytes, ratios, celsius, watts, hertz), ``_total`` on counters.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.health import ActiveModel, AlertEvent, GpuStats, GpuStatus, HealthSnapshot
from daemon.health.nvml import THROTTLE_REASONS

PREFIX = "spoke_"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_GPU_STATES = get_args(GpuStatus)


class DaemonMetrics:
    """Every metric of one daemon, registered in ``self.registry`` (never the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            f"{PREFIX}queue_depth", "Items waiting in a daemon queue.", ["queue"], registry=r
        )
        self.inference_latency_seconds = Histogram(
            f"{PREFIX}inference_latency_seconds",
            "Time to run one inference batch through the active backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_batch_size = Histogram(
            f"{PREFIX}inference_batch_size",
            "Tiles per inference batch.",
            ["backend"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.active_model_info = Gauge(
            f"{PREFIX}active_model_info",
            "The model serving inference (1), labelled with its name and version.",
            ["name", "version"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            f"{PREFIX}outbox_depth",
            "Events in the durable outbox the hub has not yet acknowledged as stored.",
            registry=r,
        )
        self.hub_last_contact_timestamp_seconds = Gauge(
            f"{PREFIX}hub_last_contact_timestamp_seconds",
            "Unix time of the last message exchanged with the hub; 0 before the first.",
            registry=r,
        )
        self.inputs_dropped = Counter(
            f"{PREFIX}inputs_dropped",
            "Inputs dropped or refused (oversized, undecodable, queue full...), by reason.",
            ["reason"],
            registry=r,
        )
        self.gpu_events = Counter(
            f"{PREFIX}gpu_events",
            "Critical NVML events (Xid, ECC...) seen, by GPU and event type.",
            ["gpu", "type"],
            registry=r,
        )
        self.health_alert_active = Gauge(
            f"{PREFIX}health_alert_active",
            "Health alerts currently raised (1), by alert and subject.",
            ["alert", "subject"],
            registry=r,
        )
        self._snapshot = SnapshotCollector()
        r.register(self._snapshot)

    def set_active_model(self, model: ActiveModel | None) -> None:
        """Exactly one series while a model is active, none otherwise."""
        self.active_model_info.clear()
        if model is not None:
            self.active_model_info.labels(model.name, model.version).set(1)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count dropped or refused inputs (DESIGN rule: every drop increments a counter)."""
        self.inputs_dropped.labels(reason).inc(count)

    def update_from_snapshot(self, snapshot: HealthSnapshot) -> None:
        """Expose ``snapshot`` on the next scrape and count its GPU events."""
        self._snapshot.latest = snapshot
        for event in snapshot.gpu.events:
            self.gpu_events.labels(str(event.gpu_index), event.type).inc()

    def apply_alert_events(self, events: Iterable[AlertEvent]) -> None:
        for event in events:
            if event.state == "raised":
                self.health_alert_active.labels(event.alert, event.subject).set(1)
            else:
                self.health_alert_active.remove(event.alert, event.subject)

    def restore_alerts(self, active: Iterable[tuple[str, str]]) -> None:
        """The gauges for alerts that were raised before a restart."""
        for alert, subject in active:
            self.health_alert_active.labels(alert, subject).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The body and Content-Type for a ``/metrics`` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class SnapshotCollector(Collector):
    """Renders the latest snapshot at scrape time; nothing before the first snapshot."""

    def __init__(self) -> None:
        self.latest: HealthSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.latest
        if snap is None:
            return
        yield from _host_metrics(snap)
        yield from _process_metrics(snap)
        yield from _gpu_metrics(snap)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _labelled(
    family: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    doc: str,
    labels: Sequence[str],
    rows: Iterable[tuple[Sequence[str], float | None]],
) -> GaugeMetricFamily | CounterMetricFamily:
    metric = family(PREFIX + name, doc, labels=labels)
    for values, value in rows:
        if value is not None:
            metric.add_metric(list(values), value)
    return metric


def _host_metrics(snap: HealthSnapshot) -> Iterator[Metric]:
    host, g, c = snap.host, GaugeMetricFamily, CounterMetricFamily
    yield _labelled(
        g,
        "cpu_usage_ratio",
        "Busy share of each logical CPU since the previous snapshot.",
        ["cpu"],
        ((str(i), r) for i, r in enumerate(host.cpu.usage_ratio_per_core)),
    )
    yield _gauge("load1", "1-minute load average.", host.cpu.load_1m)
    yield _gauge("load5", "5-minute load average.", host.cpu.load_5m)
    yield _gauge("load15", "15-minute load average.", host.cpu.load_15m)
    mem = host.memory
    yield _gauge("memory_total_bytes", "Physical memory.", mem.total_bytes)
    yield _gauge("memory_available_bytes", "Memory usable without swapping.", mem.available_bytes)
    yield _gauge("swap_total_bytes", "Swap space.", mem.swap_total_bytes)
    yield _gauge("swap_used_bytes", "Swap space in use.", mem.swap_used_bytes)
    fs_labels = ["mountpoint", "device", "fstype"]
    for name, doc, attr in (
        ("filesystem_size_bytes", "Filesystem size.", "total_bytes"),
        ("filesystem_used_bytes", "Filesystem space used.", "used_bytes"),
        ("filesystem_free_bytes", "Filesystem space free to unprivileged users.", "free_bytes"),
    ):
        yield _labelled(
            g,
            name,
            doc,
            fs_labels,
            (((f.mountpoint, f.device, f.fstype), getattr(f, attr)) for f in host.filesystems),
        )
    for name, doc, attr in (
        ("disk_read_bytes_total", "Bytes read from the disk.", "read_bytes"),
        ("disk_written_bytes_total", "Bytes written to the disk.", "written_bytes"),
        ("disk_reads_completed_total", "Reads completed.", "reads_completed"),
        ("disk_writes_completed_total", "Writes completed.", "writes_completed"),
    ):
        yield _labelled(
            c, name, doc, ["device"], (((d.device,), getattr(d, attr)) for d in host.disks)
        )
    for name, doc, attr in (
        ("network_receive_bytes_total", "Bytes received.", "received_bytes"),
        ("network_transmit_bytes_total", "Bytes transmitted.", "transmitted_bytes"),
        ("network_receive_packets_total", "Packets received.", "received_packets"),
        ("network_transmit_packets_total", "Packets transmitted.", "transmitted_packets"),
        ("network_receive_errors_total", "Receive errors.", "receive_errors"),
        ("network_transmit_errors_total", "Transmit errors.", "transmit_errors"),
        ("network_receive_drop_total", "Received packets dropped.", "receive_drops"),
        ("network_transmit_drop_total", "Outgoing packets dropped.", "transmit_drops"),
    ):
        yield _labelled(
            c, name, doc, ["interface"], (((n.interface,), getattr(n, attr)) for n in host.networks)
        )
    yield _labelled(
        g,
        "hwmon_temperature_celsius",
        "Temperatures the kernel exposes (hwmon, thermal zones).",
        ["chip", "sensor"],
        (((t.chip, t.label), t.celsius) for t in host.temperatures),
    )
    yield _labelled(
        g,
        "hwmon_fan_rpm",
        "Fan speeds the kernel exposes.",
        ["chip", "sensor"],
        (((f.chip, f.label), f.rpm) for f in host.fans),
    )
    yield _gauge("boot_time_seconds", "Unix time the host booted.", host.boot_time_s)
    yield _gauge("uptime_seconds", "Seconds since the host booted.", host.uptime_s)


def _process_metrics(snap: HealthSnapshot) -> Iterator[Metric]:
    proc = snap.process
    yield _gauge(
        "process_resident_memory_bytes", "Daemon resident memory.", proc.resident_memory_bytes
    )
    yield _gauge("process_open_fds", "Open file descriptors of the daemon.", proc.open_fds)
    yield _gauge("process_threads", "Threads of the daemon.", proc.threads)
    yield CounterMetricFamily(
        PREFIX + "process_cpu_seconds_total", "CPU time used by the daemon.", value=proc.cpu_seconds
    )
    yield _gauge("process_start_time_seconds", "Unix time the daemon started.", proc.start_time_s)
    yield _gauge(
        "health_collect_duration_seconds",
        "Wall time of the latest health collection.",
        snap.collect_duration_s,
    )
    yield _gauge("health_faults", "Collector faults in the latest snapshot.", len(snap.faults))


def _gpu_metrics(snap: HealthSnapshot) -> Iterator[Metric]:
    section, g = snap.gpu, GaugeMetricFamily
    yield _labelled(
        g,
        "gpu_nvml_state",
        "NVML state (1 for the current one): ok, absent (no GPU), unavailable (no NVML), fault.",
        ["state"],
        (((s,), float(s == section.status)) for s in _GPU_STATES),
    )
    gpus = section.gpus
    yield _labelled(
        g,
        "gpu_info",
        "One series per GPU (1) with its identity and driver.",
        ["gpu", "name", "uuid", "driver_version", "cuda_driver_version"],
        (
            (
                (
                    str(x.index),
                    x.name,
                    x.uuid,
                    section.driver_version or "",
                    section.cuda_driver_version or "",
                ),
                1.0,
            )
            for x in gpus
        ),
    )
    for name, doc, attr in _GPU_GAUGES:
        yield _labelled(g, name, doc, ["gpu"], (((str(x.index),), getattr(x, attr)) for x in gpus))
    yield _labelled(
        g,
        "gpu_throttle_reason_active",
        "Clock throttle reasons NVML reports (1 active, 0 not).",
        ["gpu", "reason"],
        (
            ((str(x.index), reason), float(reason in x.throttle_reasons))
            for x in gpus
            for _, reason in THROTTLE_REASONS
        ),
    )
    yield _labelled(
        CounterMetricFamily,
        "gpu_ecc_errors_total",
        "Volatile ECC memory errors since the driver loaded, by type.",
        ["gpu", "type"],
        _ecc_rows(gpus),
    )


def _ecc_rows(gpus: Sequence[GpuStats]) -> Iterator[tuple[Sequence[str], float | None]]:
    for x in gpus:
        yield (str(x.index), "corrected"), x.ecc_corrected_errors
        yield (str(x.index), "uncorrected"), x.ecc_uncorrected_errors


_GPU_GAUGES = (
    ("gpu_utilization_ratio", "Share of time a kernel ran on the GPU.", "utilization_ratio"),
    (
        "gpu_memory_utilization_ratio",
        "Share of time GPU memory was read or written.",
        "memory_utilization_ratio",
    ),
    ("gpu_memory_used_bytes", "GPU memory allocated.", "memory_used_bytes"),
    ("gpu_memory_total_bytes", "GPU memory installed.", "memory_total_bytes"),
    ("gpu_temperature_celsius", "GPU core temperature.", "temperature_celsius"),
    (
        "gpu_temperature_slowdown_celsius",
        "Temperature at which the GPU slows its clocks.",
        "temperature_slowdown_celsius",
    ),
    (
        "gpu_temperature_shutdown_celsius",
        "Temperature at which the GPU shuts down.",
        "temperature_shutdown_celsius",
    ),
    ("gpu_power_draw_watts", "Power drawn by the board.", "power_draw_watts"),
    ("gpu_power_limit_watts", "Enforced power limit.", "power_limit_watts"),
    ("gpu_clock_sm_hertz", "Current SM clock.", "clock_sm_hertz"),
    ("gpu_clock_memory_hertz", "Current memory clock.", "clock_memory_hertz"),
    ("gpu_pcie_link_generation", "Current PCIe link generation.", "pcie_link_generation"),
    ("gpu_pcie_link_width", "Current PCIe link width in lanes.", "pcie_link_width"),
    ("gpu_fan_speed_ratio", "Fan speed as a share of its maximum.", "fan_speed_ratio"),
)
