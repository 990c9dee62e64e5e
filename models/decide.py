"""Which labels an image gets from its probabilities: one rule for serving and for the gate.

"background" means "no defect". It never competes with a defect: an image is reported as
background exactly when no defect label is at or over its threshold, so it is never reported as
both background and a defect. Models without a background label report nothing for a sound
image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.errors import ModelError

BACKGROUND = "background"
UNITS = ("tile", "frame")


@dataclass(frozen=True)
class Decision:
    """What a model card's thresholds are calibrated for: one decision per tile, or one per
    frame (each label's maximum over the frame's tiles, cut after ``downscale``). A frame's
    maximum over tens of tiles needs higher thresholds than one tile, so a fine-tune must keep
    calibrating, and the gate must keep judging, the decision its parent was made for."""

    unit: Literal["tile", "frame"] = "tile"
    downscale: int = 1

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ModelError(f"decision unit {self.unit!r}: must be one of {', '.join(UNITS)}")
        if isinstance(self.downscale, bool) or not isinstance(self.downscale, int) \
                or self.downscale < 1:
            raise ModelError(f"decision downscale {self.downscale!r}: must be a whole number >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "downscale": self.downscale}

    @classmethod
    def from_dict(cls, data: Any) -> Decision:
        if not isinstance(data, dict) or set(data) != {"unit", "downscale"}:
            raise ModelError(f"decision {data!r}: must be {{\"unit\": ..., \"downscale\": ...}}")
        return cls(data["unit"], data["downscale"])

    def __str__(self) -> str:
        if self.unit == "tile":
            return "per tile"
        return f"per frame (the maximum over its tiles, downscale {self.downscale})"


#: The decision of a card that does not say (written before ``Decision`` existed).
PER_TILE = Decision()


def decide(probs: Sequence[float], labels: Sequence[str], thresholds: Mapping[str, float]
           ) -> list[str]:
    """The labels reported for one image (``probs`` in ``labels`` order)."""
    row = decide_many(np.asarray([probs], dtype=np.float32), labels, thresholds)[0]
    return [name for name, on in zip(labels, row, strict=True) if on]


def decide_many(probs: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]
                ) -> np.ndarray:
    """(N, L) booleans for (N, L) probabilities: each defect at or over its threshold (0.5
    when the card has none), background where no defect is."""
    labels = list(labels)
    thr = np.asarray([thresholds.get(n, 0.5) for n in labels], dtype=np.float32)
    on = probs >= thr
    if BACKGROUND in labels:
        j = labels.index(BACKGROUND)
        defects = np.delete(on, j, axis=1)
        on[:, j] = ~defects.any(axis=1)
    return on
