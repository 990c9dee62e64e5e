"""``spoke-hub init``: create a hub home."""

import argparse

from provisioning.commands.common import add_home, home_of
from provisioning.home import init_home


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a hub home: CA, certificates, signing key, registry")
    add_home(p)
    p.add_argument("--public-host", required=True, help="the name appliances use to reach the hub")
    p.add_argument("--mqtt-port", type=int, default=8883)
    p.add_argument("--http-port", type=int, default=8443)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    home = home_of(args)
    init_home(home, args.public_host, args.mqtt_port, args.http_port)
    print(f"hub home created in {home.root}")
    print(f"provisioning public key (bake into images): {home.signing_pub}")
    return 0
