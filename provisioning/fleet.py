"""The fleet at a glance: one summary per device, from the registry and its latest health.

The CLI table (``spoke-hub devices``), the dashboard's JSON API and the hub's /metrics all read
these summaries, so the three never disagree. ``device_page`` is the one listing both the CLI
and the API serve: filtered by a placement selector, devices with active alerts first, paged.
"""

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.delivery import DesiredState
from appliance.errors import ConfigError
from appliance.health import Severity
from provisioning.placement import Term, parse_selector
from provisioning.registry import Device, Registry

#: An online device silent for longer than three default health intervals (30 s) is stale.
STALE_AFTER_S = 90.0
NO_SITE = "(no site)"
CONNECTIVITY = ("online", "stale", "offline", "revoked")
MAX_PAGE = 500


@dataclass(frozen=True)
class HealthPoint:
    """The numbers the dashboard charts, taken from one stored health snapshot."""

    at: float
    cpu_ratio: float | None
    memory_used_ratio: float | None
    disk_used_ratio: float | None
    gpu_max_temperature_celsius: float | None
    gpu_memory_used_ratio: float | None


def health_point(health: Mapping[str, Any]) -> HealthPoint:
    host = health["host"]
    cores = host["cpu"]["usage_ratio_per_core"]
    memory = host["memory"]
    disks = [
        fs["used_bytes"] / fs["total_bytes"] for fs in host["filesystems"] if fs["total_bytes"]
    ]
    gpus = health["gpu"].get("gpus", [])
    temps = [g["temperature_celsius"] for g in gpus if g.get("temperature_celsius") is not None]
    gpu_mem = [
        g["memory_used_bytes"] / g["memory_total_bytes"]
        for g in gpus
        if g.get("memory_used_bytes") is not None and g.get("memory_total_bytes")
    ]
    return HealthPoint(
        at=health["taken_at_s"],
        cpu_ratio=sum(cores) / len(cores) if cores else None,
        memory_used_ratio=(
            1 - memory["available_bytes"] / memory["total_bytes"] if memory["total_bytes"] else None
        ),
        disk_used_ratio=max(disks) if disks else None,
        gpu_max_temperature_celsius=max(temps) if temps else None,
        gpu_memory_used_ratio=max(gpu_mem) if gpu_mem else None,
    )


def connectivity(device: Device, now: float) -> str:
    """online; stale (says online but went silent); offline (or stopped, never seen); revoked."""
    if device.revoked_at is not None:
        return "revoked"
    if device.availability != "online":
        return "offline"
    if device.last_seen is None or now - device.last_seen > STALE_AFTER_S:
        return "stale"
    return "online"


def model_text(model: Mapping[str, Any] | None) -> str | None:
    """``name@version``, or None when the device runs no model (never the text "null null")."""
    if not model or not model.get("name"):
        return None
    return f"{model['name']}@{model.get('version') or '?'}"


def os_text(os: dict[str, Any]) -> str | None:
    """The running OS ``version (slot)`` and how its last update ended, e.g. ``1 (spoke_1);
    2 rolled-back: rolled back: spoke-health failed: ...``; None before any report."""
    if not os.get("version"):
        return None
    text = f"{os['version']} ({os.get('slot') or 'slot ?'})"
    last = os.get("last_update") or {}
    if last and last.get("outcome") != "committed":
        text += f"; {last.get('version')} {last.get('outcome')}: {last.get('reason')}"
    return text


def desired_text(state: DesiredState | None) -> str | None:
    if state is None:
        return None
    if state.model is not None:
        return f"{state.model.name}@{state.model.version}"
    return f"none ({state.note})" if state.note else None


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
    connectivity: str = "offline"
    desired: str | None = None

    @property
    def site(self) -> str:
        return self.device.labels.get("site", NO_SITE)

    def as_dict(self) -> dict[str, Any]:
        state = self.device.state or {}
        model = state.get("model") or {}
        error = model.get("last_error") or {}
        return self.device.as_dict() | {
            "site": self.site,
            "connectivity": self.connectivity,
            "model": model_text(model),
            "model_state": model.get("state") if model.get("name") else None,
            "model_refused": (
                {"version": error.get("version"), "code": error["code"]}
                if error.get("code") else None
            ),
            "desired_model": self.desired,
            "os_image": os_text(state.get("os") or {}),
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
    """Fold raised/cleared alert events (newest first) into the alerts still raised.

    Each keeps the id and time of the event that raised it: an acknowledgement is of that
    raise, so an alert that clears and comes back is news again."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        data = event["data"]
        latest.setdefault(
            (data.get("alert", ""), data.get("subject", "")),
            data | {"event_id": event["id"], "device_id": event["device_id"], "ts": event["ts"]},
        )
    return [a for a in latest.values() if a.get("state") == "raised"]


CERT_EXPIRY_WARNING_S = 30 * 86400


def certificate_alert(device: Device, now: float) -> dict[str, Any] | None:
    """The hub's own alert: a certificate ending within 30 days that was not renewed.

    A device renews at two thirds of its lifetime, so one this close to the end has been
    offline or refused; after the end only re-enrollment with a bundle brings it back.
    It has no event (so no acknowledgement): it lasts while the certificate does.
    """
    end = device.cert_not_after
    if end is None or device.revoked_at is not None or end - now > CERT_EXPIRY_WARNING_S:
        return None
    days = (end - now) / 86400
    return {
        "alert": "certificate_expiring" if end > now else "certificate_expired",
        "state": "raised",
        "severity": Severity.WARNING if end > now else Severity.CRITICAL,
        "subject": device.id,
        "device_id": device.id,
        "event_id": None,
        "ts": now,
        "not_after": end,
        "message": (
            f"certificate ends in {days:.1f} days and was not renewed"
            if end > now
            else "certificate expired: the device must re-enroll with a bundle"
        ),
    }


def with_acks(registry: Registry, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert with its acknowledgement (who, when) or None; the hub's own alerts have none."""
    acks = registry.acknowledgements([a["event_id"] for a in alerts if a["event_id"]])
    return [a | {"acknowledged": acks.get(a["event_id"] or "")} for a in alerts]


def summarize(
    device: Device,
    health: dict[str, Any] | None,
    alert_events: list[dict[str, Any]],
    now: float | None = None,
    desired: str | None = None,
) -> DeviceSummary:
    now = time.time() if now is None else now
    alerts = active_alerts(alert_events)
    cert_alert = certificate_alert(device, now)
    if cert_alert is not None:
        alerts.append(cert_alert)
    base = DeviceSummary(
        device, alerts=alerts, connectivity=connectivity(device, now), desired=desired
    )
    if not health:
        return base
    point = health_point(health)
    gpu = health["gpu"]
    return DeviceSummary(
        device,
        cpu_ratio=point.cpu_ratio,
        memory_used_ratio=point.memory_used_ratio,
        disk_used_ratio=point.disk_used_ratio,
        gpu_status=gpu["status"],
        gpu_count=len(gpu.get("gpus", [])),
        gpu_max_temperature_celsius=point.gpu_max_temperature_celsius,
        health_at=point.at,
        alerts=alerts,
        connectivity=base.connectivity,
        desired=desired,
    )


#: Alert events folded per device: enough for every alert a device has, raised or cleared.
ALERT_EVENTS = 500


def alert_events(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    """Every device's recent alert events, newest first, in one query."""
    return registry.recent_events_by_device("alert", ALERT_EVENTS)


def fleet(registry: Registry) -> list[DeviceSummary]:
    devices = registry.devices()
    health = registry.latest_health_of([d.id for d in devices])
    alerts = alert_events(registry)
    now = time.time()
    return [summarize(d, health.get(d.id), alerts.get(d.id, []), now) for d in devices]


# --- the device list (CLI and API) ---------------------------------------------------------


def parse_filter(text: str) -> tuple[Term, ...]:
    """The dashboard's filter box: placement selector syntax, so it selects what a rule would."""
    try:
        return parse_selector(text)
    except ConfigError as exc:
        raise ConfigError(f"bad filter: {exc}") from exc


@dataclass(frozen=True)
class SiteCounts:
    site: str
    online: int = 0
    stale: int = 0
    offline: int = 0
    revoked: int = 0
    alerting: int = 0


@dataclass(frozen=True)
class DevicePage:
    """One page of the filtered fleet, plus the counts of everything the filter selects."""

    items: list[DeviceSummary]
    total: int
    next_cursor: str | None
    sites: list[SiteCounts]

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": [s.as_dict() for s in self.items],
            "total": self.total,
            "next_cursor": self.next_cursor,
            "sites": [vars(s) for s in self.sites],
        }


def _sites(summaries: Iterable[DeviceSummary]) -> list[SiteCounts]:
    counts: dict[str, dict[str, int]] = {}
    for s in summaries:
        c = counts.setdefault(s.site, dict.fromkeys((*CONNECTIVITY, "alerting"), 0))
        c[s.connectivity] += 1
        c["alerting"] += bool(s.alerts)
    return [SiteCounts(site, **c) for site, c in sorted(counts.items())]


def parse_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit():
        raise ConfigError(f"bad cursor {cursor!r}: pass back the next_cursor of the last page")
    return int(cursor)


def _listing(
    registry: Registry, selector: str, desired: Mapping[str, DesiredState] | None
) -> list[DeviceSummary]:
    """Every device the selector matches, without health, in listing order: alerting first,
    then by site and id. Three queries for the whole fleet (devices, alert events, acks)."""
    terms = parse_filter(selector)
    desired = desired or {}
    now = time.time()
    alerts = alert_events(registry)
    light = [
        summarize(d, None, alerts.get(d.id, []), now, desired_text(desired.get(d.id)))
        for d in registry.devices()
        if all(t.matches(d.labels) for t in terms)
    ]
    light.sort(key=lambda s: (not s.alerts, s.site, s.device.id))
    return light


def _with_health(registry: Registry, page: list[DeviceSummary]) -> list[DeviceSummary]:
    """The page's devices with their latest health and acknowledgements (one query each)."""
    health = registry.latest_health_of([s.device.id for s in page])
    acked = iter(with_acks(registry, [a for s in page for a in s.alerts]))
    now = time.time()
    return [
        replace(summarize(s.device, health.get(s.device.id), [], now, s.desired),
                alerts=[next(acked) for _ in s.alerts], connectivity=s.connectivity)
        for s in page
    ]


def device_page(
    registry: Registry,
    selector: str = "",
    limit: int = 100,
    cursor: str | None = None,
    desired: Mapping[str, DesiredState] | None = None,
) -> DevicePage:
    """Devices the selector matches, alerting ones first, then by site and id.

    Health is read only for the devices on the page: a thousand-device fleet costs one alert
    fold per device, not a thousand snapshots."""
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"bad limit {limit}: use 1 to {MAX_PAGE}")
    start = parse_cursor(cursor)
    light = _listing(registry, selector, desired)
    page = light[start:start + limit]
    end = start + len(page)
    return DevicePage(_with_health(registry, page), len(light),
                      str(end) if end < len(light) else None, _sites(light))


def every_device(
    registry: Registry, selector: str = "", desired: Mapping[str, DesiredState] | None = None
) -> Iterator[DeviceSummary]:
    """All devices the selector matches in the API's order (the CLI's list), read page by
    page from one listing."""
    light = _listing(registry, selector, desired)
    for start in range(0, len(light), MAX_PAGE):
        yield from _with_health(registry, light[start:start + MAX_PAGE])
