"""Which labels an image gets from its probabilities: one rule for serving and for the gate.

"background" means "no defect". It never competes with a defect: an image is reported as
background exactly when no defect label is at or over its threshold, so it is never reported as
both background and a defect. Models without a background label report nothing for a sound
image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

BACKGROUND = "background"


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
