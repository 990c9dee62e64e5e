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
    calibrating, and the gate must keep judging, the decision its parent was made for.

    ``mean`` names the labels an image has when its tiles have them *on average* (the sigmoid
    of the mean of their logits: damage spread over a surface, such as salt damage) instead of
    when *any* tile has them (the maximum: a crack in one corner of a frame)."""

    unit: Literal["tile", "frame"] = "tile"
    downscale: int = 1
    mean: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ModelError(f"decision unit {self.unit!r}: must be one of {', '.join(UNITS)}")
        if isinstance(self.downscale, bool) or not isinstance(self.downscale, int) \
                or self.downscale < 1:
            raise ModelError(f"decision downscale {self.downscale!r}: must be a whole number >= 1")
        if not isinstance(self.mean, tuple) or not all(
                isinstance(n, str) and n for n in self.mean) or len(set(self.mean)) != len(
                self.mean):
            raise ModelError(f"decision mean {self.mean!r}: must be distinct label names")
        if BACKGROUND in self.mean:
            raise ModelError(f"decision mean: {BACKGROUND!r} is decided from the defects, "
                             "never averaged")

    def to_dict(self) -> dict[str, Any]:
        """A card without mean labels keeps the two keys it always had."""
        out: dict[str, Any] = {"unit": self.unit, "downscale": self.downscale}
        if self.mean:
            out["mean"] = list(self.mean)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Decision:
        if not isinstance(data, dict) or not {"unit", "downscale"} <= set(data) <= {
                "unit", "downscale", "mean"}:
            raise ModelError(f"decision {data!r}: must be {{\"unit\": ..., \"downscale\": ...}}"
                             " and optionally \"mean\": [label, ...]")
        mean = data.get("mean", [])
        if not isinstance(mean, list):
            raise ModelError(f"decision mean {mean!r}: must be a list of label names")
        return cls(data["unit"], data["downscale"], tuple(mean))

    def __str__(self) -> str:
        if self.unit == "tile":
            text = "per tile"
        else:
            text = f"per frame (the maximum over its tiles, downscale {self.downscale})"
        if self.mean:
            text += f"; {', '.join(self.mean)} on the mean over the tiles"
        return text


#: The decision of a card that does not say (written before ``Decision`` existed).
PER_TILE = Decision()


def image_probs(tile_probs: np.ndarray, owner: np.ndarray, images: int,
                labels: Sequence[str], decision: Decision) -> np.ndarray:
    """(N, L): each image's probabilities from its tiles' (M, L) ``tile_probs`` (``owner[i]``:
    the image tile ``i`` belongs to): the maximum over its tiles, or for the labels
    ``decision.mean`` names, the sigmoid of the mean of the tiles' logits."""
    out = np.full((images, tile_probs.shape[1]), -np.inf, dtype=np.float64)
    np.maximum.at(out, owner, tile_probs)
    averaged = [j for j, name in enumerate(labels) if name in decision.mean]
    if averaged:
        p = np.clip(tile_probs[:, averaged].astype(np.float64), 1e-7, 1 - 1e-7)
        logits = np.zeros((images, len(averaged)))
        np.add.at(logits, owner, np.log(p) - np.log1p(-p))
        counts = np.bincount(owner, minlength=images)[:, None]
        out[:, averaged] = 1 / (1 + np.exp(-logits / np.maximum(counts, 1)))
    return out.astype(tile_probs.dtype)


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
