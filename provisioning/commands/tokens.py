"""``spoke-hub tokens create|list|revoke``: operator tokens for the hub's API and dashboard.

The token is printed once, alone on its line (``--json``: ``{"token": ...}``); only its hash is
kept. Revocation holds from the next request on and ends the token's browser sessions.
"""

import argparse

from appliance.cli import print_json, print_table
from provisioning import operators
from provisioning.commands.common import add_home, home_of
from provisioning.registry import Registry, open_registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="operator tokens for the hub's API, dashboard and metrics")
    tsub = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a token and print it once")
    add_home(c)
    c.add_argument("--name", required=True, help="who uses it, e.g. alice or prometheus")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=create)
    ls = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    add_home(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_tokens)
    r = tsub.add_parser("revoke", help="revoke a token by name or id")
    add_home(r)
    r.add_argument("token", metavar="NAME_OR_ID")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=revoke)


def _registry(args: argparse.Namespace) -> Registry:
    home = home_of(args)
    home.require()
    return open_registry(home)


def create(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        info, token = operators.create_token(registry, args.name)
    finally:
        registry.close()
    if args.json:
        print_json({"token": token, **info.as_dict()})
    else:
        print(token)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        tokens = [t.as_dict() for t in registry.operator_tokens()]
    finally:
        registry.close()
    if args.json:
        print_json(tokens)
        return 0
    print_table(
        [{**t, "state": "active" if t["active"] else "revoked"} for t in tokens],
        ["id", "name", "state"],
    )
    return 0


def revoke(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        info = operators.revoke_token(registry, args.token)
    finally:
        registry.close()
    if args.json:
        print_json(info.as_dict())
    else:
        print(f"token {info.name} ({info.id}) revoked")
    return 0
