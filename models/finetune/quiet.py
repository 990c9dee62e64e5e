"""Background means no defect, also for the labels a site did not train.

A fine-tune refits the head rows of the labels the site's samples carry (its task); every other
label keeps the parent's row and threshold, which were calibrated on other sites. On real photos
of a site that labeled only salt damage, the parent's crack, spallation and exposed bars then
fired on every photo (docs/FOUNDATION-MODEL.md, session 7): an inspector would see cracks on
sound concrete. A sample labeled background is a true negative for every label, so each such
label's threshold is raised just over the highest probability it gives any of the site's N
background samples. Why this rule: for a new background image of the site, exchangeable with
those N, the chance that it is the highest of the N + 1 is 1/(N + 1), so the chance that it
still fires is at most that (the rank argument of split conformal prediction), and nothing is
fitted to the samples but one cut per label. What it costs, the label's recall at this site,
cannot be measured from samples that never show the label; it is reported on the card.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.decide import BACKGROUND

#: How far over the highest background probability the new threshold sits: more than the card's
#: rounding (6 decimals) and the backends' differences (ONNX Runtime against PyTorch).
MARGIN = 1e-4


def untrained(labels: Sequence[str], carried: Collection[str]) -> list[str]:
    """The defect labels no sample carries (outside the site's task): the ones that keep the
    parent's head row."""
    return [name for name in labels if name not in carried and name != BACKGROUND]


@dataclass(frozen=True)
class Quieted:
    """What the rule did: how many background samples it read, and for each label it raised,
    (the parent's threshold, the new one)."""

    background: int
    raised: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background,
                "raised": {k: list(v) for k, v in self.raised.items()}}


def quiet(probs: np.ndarray, labels: Sequence[str], names: Sequence[str],
          thresholds: dict[str, float]) -> Quieted:
    """Raise the threshold of each label in ``names`` over its highest probability in
    ``probs`` (B, L in ``labels`` order), the served probabilities of the site's B background
    samples, where it would fire on one of them; ``thresholds`` is updated in place. A
    probability within ``MARGIN`` of 1 leaves the label at 1.0 (it fires only where the model
    saturates)."""
    raised: dict[str, tuple[float, float]] = {}
    for name in names:
        top = float(probs[:, list(labels).index(name)].max(initial=0.0))
        if top >= thresholds[name]:
            new = min(1.0, round(top + MARGIN, 6))
            raised[name] = (thresholds[name], new)
            thresholds[name] = new
    return Quieted(len(probs), raised)


def card_metrics(rule: dict[str, Any] | None) -> dict[str, float]:
    """The card's record of a job's rule (``Quieted.to_dict``, as the job's result keeps it):
    how many background samples it read and each raised label's threshold before; nothing
    where the site trained every label (``None``)."""
    if rule is None:
        return {}
    return {"finetune.background_samples": float(rule["background"])} | {
        f"finetune.raised_from.{name}": old for name, (old, _) in rule["raised"].items()}
