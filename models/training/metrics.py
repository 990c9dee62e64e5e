"""Multi-label metrics as CODEBRIM papers report them."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    per_label_f1: dict[str, float]
    macro_f1: float
    exact_match: float  # fraction of images whose whole label set is right


def f1_per_label(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(L,) F1 of (N, L) boolean decisions against (N, L) boolean truth (0 when a label is
    neither predicted nor present: no free points)."""
    tp = (pred & true).sum(axis=0)
    return 2 * tp / np.maximum(pred.sum(axis=0) + true.sum(axis=0), 1)


def score(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], threshold: float = 0.5
) -> Scores:
    """F1 per label (0 when a label is neither predicted nor present: no free points),
    their unweighted mean, and the exact-match ratio."""
    pred = probs >= threshold
    true = targets >= 0.5
    f1 = f1_per_label(pred, true)
    return Scores(
        {name: float(v) for name, v in zip(labels, f1, strict=True)},
        float(f1.mean()),
        float((pred == true).all(axis=1).mean()),
    )


def calibrate_thresholds(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """Per label, the threshold (0.05 to 0.95) with the best F1 on held-out data: a head
    trained on unbalanced labels is rarely best cut at 0.5. Ties go to the one nearest 0.5."""
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]
    true = targets >= 0.5
    out = {}
    for j, name in enumerate(labels):
        pred = probs[:, j][None, :] >= order[:, None]
        tp = (pred & true[:, j]).sum(axis=1)
        wrong = (pred != true[:, j]).sum(axis=1)
        f1 = 2 * tp / np.maximum(2 * tp + wrong, 1)
        out[name] = float(order[int(np.argmax(f1))])
    return out


def score_at(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]
) -> Scores:
    """``score`` with one threshold per label."""
    cut = np.array([thresholds[name] for name in labels], dtype=np.float64)
    return score(probs - cut + 0.5, targets, labels)
