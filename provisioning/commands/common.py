"""Arguments and helpers the hub's commands share."""

import argparse
import re
from pathlib import Path

from appliance.errors import ConfigError
from provisioning.home import HubHome

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, required=True, help="the hub's home directory")


def home_of(args: argparse.Namespace) -> HubHome:
    return HubHome(args.home.resolve())


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30m, 12h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_labels(text: str) -> dict[str, str]:
    """``site=bridge-17,region=north`` as a dict; keys and values are plain tokens."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if (
            not sep
            or not re.fullmatch(r"[a-z][a-z0-9_.-]*", key)
            or not re.fullmatch(r"[A-Za-z0-9_.-]+", value)
        ):
            raise ConfigError(f"bad label {part!r}: use key=value with letters, digits, . _ -")
        labels[key] = value
    return labels
