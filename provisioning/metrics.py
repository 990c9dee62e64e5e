"""The hub's /metrics: the whole fleet in one scrape, labelled by device and site labels."""

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from provisioning.fleet import DeviceSummary, fleet
from provisioning.registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AVAILABILITY = ("online", "offline", "stopped", "revoked", "never-seen", "unknown")


# Process-wide: what this hub process refused from devices since it started.
INGEST = CollectorRegistry()
MESSAGES_REFUSED = Counter(
    "spoke_hub_messages_refused",
    "Device messages the hub refused, by topic (available, state, health, events) and reason",
    ["topic", "reason"],
    registry=INGEST,
)


def _label_name(key: str) -> str:
    return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class FleetCollector(Collector):
    """Reads the registry at scrape time, so a scrape always sees the current fleet."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        summaries = fleet(self.registry)
        keys = sorted({k for s in summaries for k in s.device.labels})
        names = ["device", *(_label_name(k) for k in keys)]

        def labels(s: DeviceSummary) -> list[str]:
            return [s.device.id, *(s.device.labels.get(k, "") for k in keys)]

        by_state = GaugeMetricFamily(
            "spoke_fleet_devices", "Devices by availability", labels=["availability"]
        )
        for state in AVAILABILITY:
            by_state.add_metric(
                [state], sum(s.device.as_dict()["availability"] == state for s in summaries)
            )
        yield by_state

        gauges = {
            "up": ("spoke_device_up", "1 while the device is online"),
            "seen": ("spoke_device_last_seen_timestamp_seconds", "Last message from the device"),
            "cpu": ("spoke_device_cpu_usage_ratio", "Mean CPU use over cores"),
            "mem": ("spoke_device_memory_used_ratio", "Memory in use"),
            "disk": ("spoke_device_disk_used_ratio", "Fullest filesystem"),
            "gpu": ("spoke_device_gpu_temperature_max_celsius", "Hottest GPU"),
            "alerts": ("spoke_device_alerts_active", "Health alerts currently raised"),
        }
        families = {k: GaugeMetricFamily(n, h, labels=names) for k, (n, h) in gauges.items()}
        for s in summaries:
            lv = labels(s)
            families["up"].add_metric(
                lv, 1.0 if s.device.as_dict()["availability"] == "online" else 0.0
            )
            families["alerts"].add_metric(lv, float(len(s.alerts)))
            if s.device.last_seen is not None:
                families["seen"].add_metric(lv, s.device.last_seen)
            for key, value in (
                ("cpu", s.cpu_ratio),
                ("mem", s.memory_used_ratio),
                ("disk", s.disk_used_ratio),
                ("gpu", s.gpu_max_temperature_celsius),
            ):
                if value is not None:
                    families[key].add_metric(lv, value)
        yield from families.values()


def exposition(registry: Registry) -> bytes:
    prom = CollectorRegistry(auto_describe=False)
    prom.register(FleetCollector(registry))
    return generate_latest(prom) + generate_latest(INGEST)
