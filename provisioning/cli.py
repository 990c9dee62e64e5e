"""``spoke-hub``: the hub's command line. Each group of commands lives in its own module."""

from collections.abc import Sequence

from appliance.cli import build_parser, run_cli

COMMAND_MODULES = [
    "provisioning.commands.init",
    "provisioning.commands.serve",
    "provisioning.commands.bundle",
    "provisioning.commands.devices",
    "provisioning.commands.data",
    "provisioning.commands.pretrain",
    "provisioning.commands.events",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "spoke-hub", "The Spoke hub: enrollment, fleet and models.", COMMAND_MODULES
    )
    return run_cli(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
