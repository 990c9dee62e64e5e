"""``spoke``: the appliance's command line. Each group of commands lives in its own module."""

from collections.abc import Sequence

from appliance.cli import build_parser, run_cli

COMMAND_MODULES = [
    "daemon.commands.run",
    "daemon.commands.status",
    "daemon.commands.model",
    "daemon.commands.infer",
    "daemon.commands.bench",
    "daemon.commands.tokens",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("spoke", "The Spoke appliance daemon and its tools.", COMMAND_MODULES)
    return run_cli(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
