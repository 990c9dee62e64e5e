"""A stratified held-out split for multi-label samples.

Each sample is filed under its rarest label (over the whole set), so a label seen in a few
samples is not swallowed by a common one; each group then gives about ``fraction`` of its
samples to the held-out side, at least one when it has two or more and never all of them.
Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from appliance.errors import DataError

#: Below this many labeled samples there is nothing meaningful to hold out.
MIN_SAMPLES = 8


class TooFewSamples(DataError):
    """Not enough labeled samples to hold some out and still train."""


def stratified_split(
    targets: np.ndarray, labels: tuple[str, ...] | list[str], fraction: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of ``targets`` (N, L) multi-hot; raises
    ``TooFewSamples`` naming what is short."""
    if not 0.0 < fraction < 1.0:
        raise DataError("the held-out fraction must be between 0 and 1")
    n = len(targets)
    if n < MIN_SAMPLES:
        raise TooFewSamples(
            f"{n} labeled sample(s): at least {MIN_SAMPLES} are needed to hold some out for "
            "the evaluation gate; label more"
        )
    positive = targets >= 0.5
    counts = positive.sum(axis=0)
    short = [f"{labels[j]} ({int(counts[j])})" for j in range(len(labels)) if counts[j] == 1]
    if short:
        raise TooFewSamples(
            f"label(s) with a single sample: {', '.join(short)}; each label in use needs at "
            "least 2 so the held-out split can test it"
        )
    rarity = np.where(counts > 0, counts, np.iinfo(np.int64).max)
    keys = np.array([int(np.argmin(np.where(row, rarity, np.iinfo(np.int64).max)))
                     if row.any() else -1 for row in positive])
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for key in sorted(set(keys.tolist())):
        group = np.nonzero(keys == key)[0]
        group = group[rng.permutation(len(group))]
        if len(group) < 2:
            continue
        k = min(len(group) - 1, max(1, round(len(group) * fraction)))
        held.extend(group[:k].tolist())
    val = np.sort(np.asarray(held, dtype=np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val
