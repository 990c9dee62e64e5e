"""Arguments and helpers the hub's commands share."""

import argparse
import re
from pathlib import Path

from appliance.cli import parse_duration
from appliance.errors import ConfigError
from provisioning.home import HubHome

__all__ = ["add_home", "home_of", "parse_duration", "parse_labels"]


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, required=True, help="the hub's home directory")


def home_of(args: argparse.Namespace) -> HubHome:
    return HubHome(args.home.resolve())


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
