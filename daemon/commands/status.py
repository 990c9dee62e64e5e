"""``spoke status``: the appliance's side of provisioning and the hub link."""

import argparse
import time
from typing import Any

from appliance.cli import print_json
from daemon.commands.run import add_state_dir
from daemon.state import StateDir, daemon_running, load_identity, read_status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="provisioning state, hub connection and device id")
    add_state_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def collect(state: StateDir) -> dict[str, Any]:
    ident = load_identity(state)
    status = read_status(state)
    running = daemon_running(status)
    provisioning = status.get("provisioning") or {}
    certificate = ident.cert_summary() if ident is not None else None
    if certificate is not None and certificate["expired"]:
        # The daemon's own words (with why re-enrollment is stuck) win when it has said them.
        if provisioning.get("state") != "certificate-expired":
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(certificate["not_after"]))
            provisioning = {
                **provisioning,
                "state": "certificate-expired",
                "reason": f"certificate expired at {when}; re-enrolling needs a valid bundle",
            }
    elif ident is not None and provisioning.get("state") != "key-unusable":
        provisioning = {**provisioning, "state": "enrolled"}
    elif not provisioning:
        provisioning = {"state": "not-provisioned", "reason": "the daemon has not run yet"}
    hub = status.get("hub") or {"connected": False}
    if not running:
        hub = {**hub, "connected": False}
    return {
        "daemon": "running" if running else "stopped",
        "device_id": ident.device_id if ident else None,
        "labels": ident.labels if ident else {},
        "hub_address": f"{ident.hub_host}:{ident.mqtt_port}" if ident else hub.get("address"),
        "provisioning": provisioning,
        "hub": hub,
        # serial, not_after, expired, key ("tpm": sealed by this box's TPM; "file": a 0600
        # PEM file on the data partition)
        "certificate": certificate,
        "renewal": status.get("renewal"),
    }


def _since(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def run(args: argparse.Namespace) -> int:
    info = collect(StateDir(args.state_dir))
    if args.json:
        print_json(info)
        return 0
    prov = info["provisioning"]
    hub = info["hub"]
    print(f"daemon:       {info['daemon']}")
    print(f"device id:    {info['device_id'] or '(not enrolled)'}")
    print(
        f"provisioning: {prov.get('state')}"
        + (f" ({prov['reason']})" if prov.get("reason") else "")
    )
    link = "connected" if hub.get("connected") else "not connected"
    if hub.get("error") and not hub.get("connected"):
        link += f": {hub['error']}"
    print(f"hub:          {link} since {_since(hub.get('since'))} ({info['hub_address'] or '-'})")
    cert = info["certificate"]
    if cert is not None:
        end = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert["not_after"]))
        state = "EXPIRED" if cert["expired"] else "valid"
        print(f"certificate:  {state} until {end}, key: {cert['key']}")
    renewal = info["renewal"] or {}
    if renewal.get("error"):
        print(f"renewal:      failed at {_since(renewal.get('at'))}: {renewal['error']}")
    if info["labels"]:
        print("labels:       " + ", ".join(f"{k}={v}" for k, v in info["labels"].items()))
    return 0
