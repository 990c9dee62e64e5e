"""A fine-tune job's options as the API, the CLI and the hub's command give them, checked once
here: ``method``, ``budget`` (``600``, ``"90s"``, ``"10m"``, ``"1h"``), ``epochs``, ``seed``,
``adapt`` (site-adaptation steps before the few-shot step, ``models.finetune.adapt``; 0 = none).
"""

from __future__ import annotations

import re
from typing import Any

from appliance import finetune
from appliance.errors import DataError

#: ``auto`` lets the job pick (``models.finetune.spec.default_method``), or one of its methods.
METHODS = ("auto", *finetune.METHODS)
OPTION_KEYS = {"method", "budget", "epochs", "seed", "adapt"}
MAX_ADAPT_STEPS = 100_000


def parse_budget(value: Any) -> float:
    """``600``, ``"90s"``, ``"10m"``, ``"1h"`` -> seconds."""
    if isinstance(value, bool):
        raise DataError(f"budget {value!r}: give seconds or 90s / 10m / 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
        if m is None:
            raise DataError(f"budget {value!r}: give seconds or 90s / 10m / 1h")
        seconds = float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
    if not 0 < seconds <= 24 * 3600:
        raise DataError("the budget must be between 1 second and 24 hours")
    return seconds


def check_options(raw: dict[str, Any]) -> dict[str, Any]:
    """Validated job options (what the API, the CLI and the hub's command may set)."""
    unknown = set(raw) - OPTION_KEYS
    if unknown:
        raise DataError(f"unknown fine-tune option(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(sorted(OPTION_KEYS))}")
    out: dict[str, Any] = {"method": str(raw.get("method") or "auto")}
    if out["method"] not in METHODS:
        raise DataError(f"method {out['method']!r}: choose one of {', '.join(METHODS)}")
    if raw.get("budget") is not None:
        out["budget_s"] = parse_budget(raw["budget"])
    if raw.get("epochs") is not None:
        out["epochs"] = _whole(raw["epochs"], "epochs", 1, 10_000)
    if raw.get("adapt") is not None:
        out["adapt"] = _whole(raw["adapt"], "adapt", 0, MAX_ADAPT_STEPS)
    if raw.get("seed") is not None:
        try:
            out["seed"] = int(raw["seed"])
        except (TypeError, ValueError) as exc:
            raise DataError("seed must be a whole number") from exc
    return out


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as a whole number in [low, high], or a ``DataError`` naming ``name``."""
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a whole number") from exc
    if not low <= number <= high or isinstance(value, bool):
        raise DataError(f"{name} must be between {low} and {high}")
    return number
