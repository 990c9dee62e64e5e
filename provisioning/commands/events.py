"""``spoke-hub events``: what devices reported through their outboxes (detections, alerts).

Events are stored once per id (redeliveries are dropped), newest first.
"""

import argparse
import time
from typing import Any

from appliance.cli import print_json, print_table
from provisioning.commands.common import add_home, home_of
from provisioning.registry import open_registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="events devices sent: detection summaries, alerts")
    add_home(p)
    p.add_argument("--device", help="only this device's events")
    p.add_argument("--kind", help="only this kind (detection, alert, ...)")
    p.add_argument("--limit", type=int, default=50, help="newest N events (default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_events)


def _summary(event: dict[str, Any]) -> str:
    data = event["data"]
    if event["kind"] == "detection":
        labels = data.get("labels") or []
        probs = data.get("max_probs") or {}
        found = ", ".join(f"{lab} {probs.get(lab, 0):.2f}" for lab in labels) or "nothing"
        gps = data.get("gps")
        where = f" at {gps['latitude']:.5f},{gps['longitude']:.5f}" if gps else ""
        model = data.get("model") or {}
        mission = f" mission {data['mission']}" if data.get("mission") else ""
        return (f"{str(data.get('image', ''))[:12]}{mission}: {found}{where} "
                f"({model.get('name')}@{model.get('version')})")
    text = ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict | list))
    return text[:100]


def list_events(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    registry = open_registry(home)
    try:
        events = registry.events(args.device, args.kind, max(1, args.limit))
    finally:
        registry.close()
    if args.json:
        print_json(events)
        return 0
    print_table(
        [
            {
                "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])),
                "device": e["device_id"],
                "kind": e["kind"],
                "summary": _summary(e),
            }
            for e in events
        ],
        ["time", "device", "kind", "summary"],
    )
    return 0
