"""Version order shared by the hub and the appliance.

The hub decides what to desire and the appliance decides what is a downgrade; if the two ordered
versions differently ("1.0" against "1.0.0"), a rollout could be refused as a downgrade that the
hub thinks is an upgrade. So both sides use this one function.
"""

from typing import Any


def version_key(version: str) -> tuple[Any, ...]:
    """Semantic-version order: 1.10.0 > 1.9.0, "1.0" == "1.0.0", a pre-release sorts before its
    release, and build metadata (``+...``) is ignored."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    nums = [int(p) if p.isdigit() else 0 for p in core.split(".")]
    nums += [0] * (3 - len(nums))
    return (*nums, 0 if pre else 1, pre)
