"""Multi-label metrics as CODEBRIM papers report them."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    per_label_f1: dict[str, float]
    macro_f1: float
    exact_match: float  # fraction of images whose whole label set is right


def score(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], threshold: float = 0.5
) -> Scores:
    """F1 per label (0 when a label is neither predicted nor present: no free points),
    their unweighted mean, and the exact-match ratio."""
    pred = probs >= threshold
    true = targets >= 0.5
    tp = (pred & true).sum(axis=0)
    fp = (pred & ~true).sum(axis=0)
    fn = (~pred & true).sum(axis=0)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return Scores(
        {name: float(v) for name, v in zip(labels, f1, strict=True)},
        float(f1.mean()),
        float((pred == true).all(axis=1).mean()),
    )
