"""The fleet at a glance: one summary per device, from the registry and its latest health.

The CLI table, the dashboard's JSON and the hub's /metrics all read these summaries, so the
three never disagree.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from provisioning.registry import Device, Registry


@dataclass(frozen=True)
class DeviceSummary:
    device: Device
    cpu_ratio: float | None = None
    memory_used_ratio: float | None = None
    disk_used_ratio: float | None = None
    gpu_status: str | None = None
    gpu_count: int = 0
    gpu_max_temperature_celsius: float | None = None
    health_at: float | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.device.as_dict() | {
            "health": {
                "at": self.health_at,
                "cpu_ratio": self.cpu_ratio,
                "memory_used_ratio": self.memory_used_ratio,
                "disk_used_ratio": self.disk_used_ratio,
                "gpu_status": self.gpu_status,
                "gpu_count": self.gpu_count,
                "gpu_max_temperature_celsius": self.gpu_max_temperature_celsius,
            },
            "alerts": self.alerts,
        }


def active_alerts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold raised/cleared alert events (newest first) into the alerts still raised."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        data = event["data"]
        latest.setdefault((data.get("alert", ""), data.get("subject", "")), data)
    return [a for a in latest.values() if a.get("state") == "raised"]


CERT_EXPIRY_WARNING_S = 30 * 86400


def certificate_alert(device: Device, now: float) -> dict[str, Any] | None:
    """The hub's own alert: a certificate ending within 30 days that was not renewed.

    A device renews at two thirds of its lifetime, so one this close to the end has been
    offline or refused; after the end only re-enrollment with a bundle brings it back.
    """
    end = device.cert_not_after
    if end is None or device.revoked_at is not None or end - now > CERT_EXPIRY_WARNING_S:
        return None
    days = (end - now) / 86400
    return {
        "alert": "certificate_expiring" if end > now else "certificate_expired",
        "state": "raised",
        "subject": device.id,
        "not_after": end,
        "message": (
            f"certificate ends in {days:.1f} days and was not renewed"
            if end > now
            else "certificate expired: the device must re-enroll with a bundle"
        ),
    }


def summarize(
    device: Device,
    health: dict[str, Any] | None,
    alert_events: list[dict[str, Any]],
    now: float | None = None,
) -> DeviceSummary:
    alerts = active_alerts(alert_events)
    cert_alert = certificate_alert(device, time.time() if now is None else now)
    if cert_alert is not None:
        alerts.append(cert_alert)
    if not health:
        return DeviceSummary(device, alerts=alerts)
    host = health["host"]
    cores = host["cpu"]["usage_ratio_per_core"]
    memory = host["memory"]
    disks = [
        fs["used_bytes"] / fs["total_bytes"] for fs in host["filesystems"] if fs["total_bytes"]
    ]
    gpu = health["gpu"]
    temps = [
        g["temperature_celsius"]
        for g in gpu.get("gpus", [])
        if g.get("temperature_celsius") is not None
    ]
    return DeviceSummary(
        device,
        cpu_ratio=sum(cores) / len(cores) if cores else None,
        memory_used_ratio=(
            1 - memory["available_bytes"] / memory["total_bytes"] if memory["total_bytes"] else None
        ),
        disk_used_ratio=max(disks) if disks else None,
        gpu_status=gpu["status"],
        gpu_count=len(gpu.get("gpus", [])),
        gpu_max_temperature_celsius=max(temps) if temps else None,
        health_at=health["taken_at_s"],
        alerts=alerts,
    )


def fleet(registry: Registry) -> list[DeviceSummary]:
    return [
        summarize(d, registry.latest_health(d.id), registry.events(d.id, kind="alert", limit=500))
        for d in registry.devices()
    ]
