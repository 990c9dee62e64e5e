"""``spoke tokens create|list|revoke``: bearer tokens for drone uplink clients.

The token is printed once, alone on its line (``--json``: ``{"token": ...}``); only its hash is
kept. Revocation takes effect on the next request, without restarting the daemon.
"""

import argparse
import time
from typing import TYPE_CHECKING

from appliance.cli import print_json, print_table
from daemon.commands.run import add_state_dir

if TYPE_CHECKING:
    from daemon.uplink.tokens import TokenStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="bearer tokens for the drone uplink API")
    tsub = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a token and print it once")
    add_state_dir(c)
    c.add_argument("--name", required=True, help="who uses it, e.g. drone-3 or ground-station")
    c.add_argument("--expires", metavar="DURATION",
                   help="it stops working after this long, e.g. 12h, 30d (default: never)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=create)
    ls = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    add_state_dir(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_tokens)
    r = tsub.add_parser("revoke", help="revoke a token by name or id")
    add_state_dir(r)
    r.add_argument("token", metavar="NAME_OR_ID")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=revoke)


def _store(args: argparse.Namespace) -> "TokenStore":
    from daemon.uplink.tokens import TokenStore

    root = args.state_dir.resolve() / "uplink"
    root.mkdir(parents=True, exist_ok=True, mode=0o750)
    return TokenStore(root / "tokens.db")


def create(args: argparse.Namespace) -> int:
    from appliance.cli import parse_duration

    lifetime = parse_duration(args.expires) if args.expires else None
    store = _store(args)
    try:
        info, token = store.create(args.name, expires_in_s=lifetime)
    finally:
        store.close()
    if args.json:
        print_json({"token": token, **info.as_dict()})
    else:
        print(token)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        tokens = [t.as_dict() for t in store.all()]
    finally:
        store.close()
    if args.json:
        print_json(tokens)
        return 0
    print_table([{**t, "expires": _when(t["expires_at"])} for t in tokens],
                ["id", "name", "state", "expires"])
    return 0


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        info = store.revoke(args.token)
    finally:
        store.close()
    if args.json:
        print_json(info.as_dict())
    else:
        print(f"token {info.name} ({info.id}) revoked")
    return 0
