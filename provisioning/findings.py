"""Detection summaries by mission and by site: counts per label and severity, per day.

The hub holds numbers only: each detection event names an image id, its labels and their
probabilities, never the image. The pictures stay on the appliance, whose own mission report
the summary links to (``report_url``) when the device reported its API port and hostname.
"""

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from appliance.severity import BACKGROUND, DEFAULT_SEVERITY, SEVERITY, SEVERITY_NAMES
from provisioning.fleet import NO_SITE
from provisioning.registry import Device

SEVERITIES = tuple(SEVERITY_NAMES[s] for s in sorted(SEVERITY_NAMES, reverse=True))


def worst_severity(labels: Iterable[str]) -> str | None:
    """The severity name of an image's worst defect; None when it shows only background."""
    found = [SEVERITY.get(lab, DEFAULT_SEVERITY) for lab in labels if lab != BACKGROUND]
    return SEVERITY_NAMES[max(found)] if found else None


def report_url(device: Device | None, mission: str) -> str | None:
    """The appliance's own mission report, on its API (reachable from the site's network)."""
    if device is None:
        return None
    host = device.facts.get("hostname")
    port = (device.state or {}).get("api_port")
    if not host or not port:
        return None
    return f"http://{host}:{port}/v1/missions/{quote(mission, safe='')}/report"


@dataclass
class Tally:
    images: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    severity: Counter[str] = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None

    def add(self, labels: list[str], ts: float) -> None:
        self.images += 1
        self.labels.update(lab for lab in labels if lab != BACKGROUND)
        worst = worst_severity(labels)
        if worst:
            self.severity[worst] += 1
        self.first = ts if self.first is None else min(self.first, ts)
        self.last = ts if self.last is None else max(self.last, ts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "labels": dict(self.labels.most_common()),
            "severity": {s: self.severity[s] for s in SEVERITIES},
            "first": self.first,
            "last": self.last,
        }


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def summarize_findings(
    events: Iterable[Mapping[str, Any]], devices: Mapping[str, Device]
) -> dict[str, Any]:
    """Detection events (as the registry returns them) folded by mission, site and UTC day."""
    missions: dict[tuple[str, str], Tally] = {}
    sites: dict[str, Tally] = {}
    days: dict[str, dict[str, Tally]] = {}
    for e in events:
        data = e["data"]
        labels = [str(lab) for lab in data.get("labels") or []]
        device = devices.get(e["device_id"])
        site = device.labels.get("site", NO_SITE) if device else NO_SITE
        mission = str(data.get("mission") or "(no mission)")
        ts = float(data.get("captured_at") or e["ts"])
        missions.setdefault((e["device_id"], mission), Tally()).add(labels, ts)
        sites.setdefault(site, Tally()).add(labels, ts)
        days.setdefault(site, {}).setdefault(_day(ts), Tally()).add(labels, ts)
    return {
        "severities": list(SEVERITIES),
        "missions": [
            {"mission": m, "device_id": dev, "site": (
                devices[dev].labels.get("site", NO_SITE) if dev in devices else NO_SITE),
             "report_url": report_url(devices.get(dev), m)} | t.as_dict()
            for (dev, m), t in sorted(missions.items(), key=lambda kv: -(kv[1].last or 0))
        ],
        "sites": [
            {"site": s, "days": [{"day": d} | t2.as_dict() for d, t2 in sorted(days[s].items())]}
            | t.as_dict()
            for s, t in sorted(sites.items())
        ],
    }
