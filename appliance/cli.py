"""What both command lines share: sub-command registration, one-line errors, ``--json`` output."""

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from appliance.errors import ConfigError, SpokeError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` in seconds (both CLIs take lifetimes so)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30m, 12h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


Handler = Callable[[argparse.Namespace], int]


def build_parser(
    prog: str, description: str, commands: Mapping[str, str], argv: Sequence[str]
) -> argparse.ArgumentParser:
    """A parser for ``commands`` (name -> module with ``register(subparsers)``).

    Only the module of the command being run is imported, so ``spoke status`` does not pay
    for torch; the full list of modules is imported only to print the top-level help.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = commands.get(next((a for a in argv if not a.startswith("-")), ""))
    modules = [chosen] if chosen else list(dict.fromkeys(commands.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SpokeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table; an empty list prints a header and '(none)'."""
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
    if not rows:
        print("(none)")
