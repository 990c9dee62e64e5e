"""``spoke-hub devices`` and ``spoke-hub device revoke``: the fleet as the registry sees it."""

import argparse
import asyncio
import logging
import time
from typing import Any

import aiomqtt

from appliance import mqtt
from appliance.cli import print_json, print_table
from appliance.errors import ConfigError
from provisioning import broker
from provisioning.commands.common import add_home, home_of
from provisioning.home import HubHome
from provisioning.hub import broker_address, hub_tls
from provisioning.registry import Registry

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices: labels, hardware, online state, versions")
    add_home(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_devices)

    d = sub.add_parser("device", help="act on one device")
    dsub = d.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    r = dsub.add_parser("revoke", help="stop a device from connecting (the broker keeps running)")
    add_home(r)
    r.add_argument("device_id")
    r.set_defaults(handler=revoke)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _hardware(facts: dict[str, Any]) -> str:
    cpu = facts.get("cpu_count")
    mem = facts.get("memory_bytes")
    gpus = facts.get("gpus") or []
    parts = [f"{cpu} cpu" if cpu else "", f"{mem / 2**30:.0f} GiB" if mem else ""]
    parts.append(f"{len(gpus)} gpu" if gpus else "no gpu")
    return ", ".join(p for p in parts if p)


def list_devices(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    registry = Registry(home.registry)
    try:
        devices = [d.as_dict() for d in registry.devices()]
    finally:
        registry.close()
    if args.json:
        print_json(devices)
        return 0
    print_table(
        [
            {
                "device": d["id"],
                "status": d["availability"],
                "last_seen": _ago(d["last_seen"]),
                "labels": ",".join(f"{k}={v}" for k, v in d["labels"].items()),
                "hardware": _hardware(d["facts"]),
                "version": d["software_version"] or "-",
            }
            for d in devices
        ],
        ["device", "status", "last_seen", "version", "hardware", "labels"],
    )
    return 0


async def _take_over_session(home: HubHome, device_id: str) -> None:
    """Connecting with the device's client id makes the broker drop the device's session."""
    config = home.load_config()
    host, port = broker_address(config)
    async with mqtt.client(host, port, device_id, hub_tls(home, config), timeout=5):
        pass


def revoke(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    registry = Registry(home.registry)
    try:
        if registry.device(args.device_id) is None:
            raise ConfigError(f"no device {args.device_id!r}; see `spoke-hub devices`")
        registry.revoke_device(args.device_id)
        broker.write_access(home, registry)
    finally:
        registry.close()
    try:
        asyncio.run(_take_over_session(home, args.device_id))
        print(f"device {args.device_id} revoked and disconnected")
    except aiomqtt.MqttError as exc:
        print(
            f"device {args.device_id} revoked (the broker was not reachable to disconnect it "
            f"now: {exc}; it will be refused when it next connects)"
        )
    return 0
