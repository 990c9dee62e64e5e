"""``spoke-hub tokens create|list|revoke``: operator tokens for the hub's API and dashboard.

The commands are ``appliance.tokencli``'s (the appliance's uplink tokens share them); the
tokens live in the registry. Revocation holds from the next request on and ends the token's
browser sessions.
"""

import argparse
from typing import Any

from appliance.tokencli import TokenCommands
from provisioning import operators
from provisioning.commands.common import add_home, home_of
from provisioning.registry import OperatorToken, open_registry


class _OperatorTokens:
    """The registry's operator tokens, as ``appliance.tokencli.TokenBook``."""

    def __init__(self, args: argparse.Namespace) -> None:
        home = home_of(args)
        home.require()
        self.registry = open_registry(home)

    def create(self, name: str, expires_in_s: float | None) -> tuple[OperatorToken, str]:
        return operators.create_token(self.registry, name)

    def all(self) -> list[OperatorToken]:
        return self.registry.operator_tokens()

    def revoke(self, name_or_id: str) -> OperatorToken:
        return operators.revoke_token(self.registry, name_or_id)

    def close(self) -> None:
        self.registry.close()


def _row(token: dict[str, Any]) -> dict[str, Any]:
    return {**token, "state": "active" if token["active"] else "revoked"}


COMMANDS = TokenCommands(
    help="operator tokens for the hub's API, dashboard and metrics",
    example_names="alice or prometheus", add_location=add_home, open_book=_OperatorTokens,
    columns=("id", "name", "state"), row=_row)
register = COMMANDS.register
