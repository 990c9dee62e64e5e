"""``spoke-hub policy apply|show``: placement rules (see ``provisioning.placement``)."""

import argparse
from pathlib import Path

from appliance.cli import print_json, print_table
from appliance.errors import ConfigError
from appliance.fsutil import atomic_write
from provisioning.commands.common import add_home, home_of
from provisioning.placement import parse_policy
from provisioning.registry import open_registry
from provisioning.rollout import fleet_desired


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="placement policies: which model each device runs")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    a = psub.add_parser("apply", help="validate a TOML policy and make it the hub's policy")
    add_home(a)
    a.add_argument("file", type=Path)
    a.set_defaults(handler=apply)

    s = psub.add_parser("show", help="the policy and each device's desired model under it")
    add_home(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=show)


def apply(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    policy = parse_policy(text, str(args.file))
    atomic_write(home.policy, text)
    print(f"policy applied: {len(policy.rules)} rule(s); the hub publishes desired state "
          "to the devices it changes")
    return 0


def show(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    registry = open_registry(home)
    try:
        desired = fleet_desired(home, config, registry)
    finally:
        registry.close()
    rows = [
        {
            "device": device,
            "rule": d.rule or "-",
            "desired": f"{d.model.name}@{d.model.version}" if d.model else "-",
            "pinned": bool(d.model and d.model.pinned),
            "desired_os": d.os.version if d.os else "-",
            "note": "; ".join(n for n in (d.note, d.os_note) if n),
        }
        for device, d in desired.items()
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["device", "rule", "desired", "desired_os", "note"])
    return 0
