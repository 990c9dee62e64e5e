"""``spoke tokens create|list|revoke``: bearer tokens for drone uplink clients.

The commands are ``appliance.tokencli``'s (the hub's operator tokens share them); the tokens
live in ``STATE/uplink/tokens.db``. Revocation takes effect on the next request, without
restarting the daemon.
"""

import argparse
import time
from typing import Any

from appliance.tokencli import TokenBook, TokenCommands
from daemon.commands.run import add_state_dir


def _book(args: argparse.Namespace) -> TokenBook:
    from daemon.uplink.tokens import TokenStore

    root = args.state_dir.resolve() / "uplink"
    root.mkdir(parents=True, exist_ok=True, mode=0o750)
    return TokenStore(root / "tokens.db")


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _row(token: dict[str, Any]) -> dict[str, Any]:
    return {**token, "expires": _when(token["expires_at"])}


COMMANDS = TokenCommands(
    help="bearer tokens for the drone uplink API", example_names="drone-3 or ground-station",
    add_location=add_state_dir, open_book=_book, columns=("id", "name", "state", "expires"),
    row=_row, expires=True)
register = COMMANDS.register
