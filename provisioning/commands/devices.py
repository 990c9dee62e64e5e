"""``spoke-hub devices`` and ``spoke-hub device revoke``: the fleet as the registry sees it."""

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from typing import Any

import aiomqtt

from appliance import mqtt, topics
from appliance.cli import print_json, print_table
from appliance.config import parse_value
from appliance.errors import ConfigError, LinkError
from appliance.payloads import COMMANDS, CommandRequest, CommandResult
from provisioning import broker
from provisioning.commands.common import add_home, home_of
from provisioning.fleet import every_device
from provisioning.fleet_api import current_desired
from provisioning.home import HubHome
from provisioning.hub import broker_address, hub_tls
from provisioning.registry import open_registry

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices: labels, hardware, online state, versions")
    add_home(p)
    p.add_argument(
        "--selector", default="", metavar="SELECTOR",
        help="only devices a placement rule with this selector picks, e.g. 'site in (a,b)'",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_devices)

    d = sub.add_parser("device", help="act on one device")
    dsub = d.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    r = dsub.add_parser("revoke", help="stop a device from connecting (the broker keeps running)")
    add_home(r)
    r.add_argument("device_id")
    r.set_defaults(handler=revoke)

    c = dsub.add_parser("cmd", help="send a command to a device and print its result")
    add_home(c)
    c.add_argument("device_id")
    c.add_argument("name", help=f"one of: {', '.join(COMMANDS)}")
    c.add_argument("args", nargs="*", metavar="KEY=VALUE", help="command arguments")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=command)


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def _health(row: dict[str, Any]) -> str:
    health = row["health"]
    if health["at"] is None:
        return "no report yet"
    parts = [
        f"cpu {_pct(health['cpu_ratio'])}",
        f"mem {_pct(health['memory_used_ratio'])}",
        f"disk {_pct(health['disk_used_ratio'])}",
    ]
    if row["alerts"]:
        parts.append("ALERTS: " + ",".join(a["alert"] for a in row["alerts"]))
    return " ".join(parts)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _cert_expiry(not_after: float | None) -> str:
    if not_after is None:
        return "-"
    days = (not_after - time.time()) / 86400
    day = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    return f"{day} EXPIRED" if days <= 0 else f"{day} ({days:.0f}d)"


def _hardware(facts: dict[str, Any]) -> str:
    cpu = facts.get("cpu_count")
    mem = facts.get("memory_bytes")
    gpus = facts.get("gpus") or []
    parts = [f"{cpu} cpu" if cpu else "", f"{mem / 2**30:.0f} GiB" if mem else ""]
    parts.append(f"{len(gpus)} gpu" if gpus else "no gpu")
    return ", ".join(p for p in parts if p)


def _model(row: dict[str, Any]) -> str:
    """Reported model ``name@version (state)``, and the version it last refused, if any."""
    text = f"{row['model']} ({row['model_state']})" if row["model"] else "-"
    refused = row["model_refused"]
    if refused:
        text += f" refused {refused['version']}: {refused['code']}"
    return text


def list_devices(args: argparse.Namespace) -> int:
    """The same rows, in the same order, as the dashboard's ``GET /api/v1/devices`` pages."""
    home = home_of(args)
    home.require()
    registry = open_registry(home)
    try:
        desired = current_desired(home, home.load_config(), registry)
        rows = [s.as_dict() for s in every_device(registry, args.selector, desired)]
    finally:
        registry.close()
    if args.json:
        print_json(rows)
        return 0
    print_table(
        [
            {
                "device": d["id"],
                "status": d["connectivity"],
                "last_seen": _ago(d["last_seen"]),
                "labels": ",".join(f"{k}={v}" for k, v in d["labels"].items()),
                "hardware": _hardware(d["facts"]),
                "version": d["software_version"] or "-",
                "cert_expires": _cert_expiry(d["cert_not_after"]),
                # tpm: sealed by the box's TPM; file: a 0600 file (docs/IDENTITY.md)
                "key": ((d.get("state") or {}).get("certificate") or {}).get("key") or "-",
                "health": _health(d),
                "desired_model": d["desired_model"] or "-",
                "model": _model(d),
                "os": d["os_image"] or "-",
            }
            for d in rows
        ],
        ["device", "status", "last_seen", "version", "cert_expires", "key", "desired_model",
         "model", "os", "health", "hardware", "labels"],
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
    registry = open_registry(home)
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


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad argument {pair!r}: use KEY=VALUE")
        parsed[key] = parse_value(value)
    return parsed


async def send_command(
    home: HubHome, device_id: str, name: str, args: dict[str, Any], timeout: float
) -> CommandResult:
    """Publish a command as the hub and wait for the device's answer with the same id."""
    config = home.load_config()
    host, port = broker_address(config)
    request = CommandRequest(id=uuid.uuid4().hex, args=args, sent_at=time.time())
    result_topic = topics.command_result(device_id, name)
    try:
        async with mqtt.client(
            host, port, f"hub-cli-{request.id[:8]}", hub_tls(home, config), timeout=10
        ) as client:
            await client.subscribe(result_topic, qos=1)
            await client.publish(topics.command(device_id, name), request.model_dump_json(), qos=1)
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    result = CommandResult.model_validate_json(payload)
                    if result.id in (request.id, ""):
                        return result
    except TimeoutError as exc:
        raise LinkError(f"{device_id} did not answer {name!r} within {timeout:.0f} s") from exc
    except aiomqtt.MqttError as exc:
        raise LinkError(f"cannot reach the hub's broker at {host}:{port}: {exc}") from exc
    raise LinkError("the broker closed the connection")


def command(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    if args.name not in COMMANDS:
        raise ConfigError(f"unknown command {args.name!r}; known: {', '.join(COMMANDS)}")
    registry = open_registry(home)
    try:
        device = registry.device(args.device_id)
    finally:
        registry.close()
    if device is None:
        raise ConfigError(f"no device {args.device_id!r}; see `spoke-hub devices`")
    state = device.as_dict()["availability"]
    if state != "online":
        raise LinkError(
            f"device {args.device_id} is {state} (last seen {_ago(device.last_seen)});"
            " commands reach only online devices"
        )
    result = asyncio.run(
        send_command(home, args.device_id, args.name, _parse_args(args.args), args.timeout)
    )
    if args.json:
        print_json(result.model_dump())
    elif result.ok:
        print(json.dumps(result.result, indent=2, sort_keys=True))
    else:
        print(f"spoke-hub: {args.device_id} refused {args.name!r}: {result.error}", file=sys.stderr)
    return 0 if result.ok else 1
