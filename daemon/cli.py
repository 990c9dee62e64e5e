"""``spoke``: the appliance's command line. Each group of commands lives in its own module."""

import sys
from collections.abc import Sequence

from appliance.cli import build_parser, run_cli

# Each top-level command and the module that registers it (imported only when used).
COMMANDS = {
    "run": "daemon.commands.run",
    "status": "daemon.commands.status",
    "health-gate": "daemon.commands.healthgate",
    "infer": "daemon.commands.infer",
    "bench": "daemon.commands.bench",
    "tokens": "daemon.commands.tokens",
    "models": "daemon.commands.models",
    "samples": "daemon.commands.samples",
    "finetune": "daemon.commands.finetune",
    "report": "daemon.commands.report",
    "pair": "daemon.commands.pair",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser("spoke", "The Spoke appliance daemon and its tools.", COMMANDS, args)
    return run_cli(parser, args)


if __name__ == "__main__":
    raise SystemExit(main())
