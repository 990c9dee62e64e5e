"""``spoke-hub``: the hub's command line. Each group of commands lives in its own module."""

import sys
from collections.abc import Sequence

from appliance.cli import build_parser, run_cli

# Each top-level command and the module that registers it (imported only when used).
COMMANDS = {
    "init": "provisioning.commands.init",
    "serve": "provisioning.commands.serve",
    "bundle": "provisioning.commands.bundle",
    "devices": "provisioning.commands.devices",
    "device": "provisioning.commands.devices",
    "data": "provisioning.commands.data",
    "pretrain": "provisioning.commands.pretrain",
    "foundation": "provisioning.commands.foundation",
    "evaluate": "provisioning.commands.pretrain",
    "events": "provisioning.commands.events",
    "models": "provisioning.commands.models",
    "os": "provisioning.commands.osversions",
    "policy": "provisioning.commands.policy",
    "tokens": "provisioning.commands.tokens",
}


#: The `hub` extra's packages, which an appliance's image does not carry (pyproject.toml).
HUB_PACKAGES = frozenset({"sqlalchemy", "psycopg", "boto3", "botocore"})


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(
            "spoke-hub", "The Spoke hub: enrollment, fleet and models.", COMMANDS, args
        )
        return run_cli(parser, args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in HUB_PACKAGES:
            raise
        print(f"spoke-hub: error: {exc.name} is not installed: the hub's packages are the "
              "'hub' extra (pip install 'spoke[hub]')", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
