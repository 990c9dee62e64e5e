"""The evaluation gate: may a candidate replace the current model? A pure function.

Both models are scored on the same held-out split, over the labels that split contains. The
candidate is promoted only if its macro-F1 beats the current one by at least ``margin`` (and is
strictly higher) and no single label's F1 drops by more than ``max_label_drop``. The comparison
is returned whichever way it went, with the reasons.

A label's drop refuses the candidate only if it is also beyond the noise of that label's
held-out decisions, when those are given (``changes``): with a handful of held-out samples one
flipped decision moves F1 by more than ``max_label_drop``. The test is McNemar's exact test,
once on the samples that carry the label (found -> missed against missed -> found) and once on
those that do not (false alarms raised against cleared): under "both models err equally often",
each changed decision is a fair coin. Only when both sides are likely (p > ``ALPHA``) is the
drop noise, and the reason says so. A label the candidate no longer finds at all (F1 0 where
the parent's was above 0) is always refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.training.metrics import Scores

#: One-sided significance level of a per-label drop (McNemar's exact test).
ALPHA = 0.05


@dataclass(frozen=True)
class Changes:
    """Held-out decisions of one label that the candidate changed: ``worse`` were right and
    became wrong, ``better`` the reverse."""

    worse: int
    better: int

    @property
    def p_value(self) -> float:
        """P(at least ``worse`` of the changed decisions go wrong | a fair coin each)."""
        n = self.worse + self.better
        return sum(math.comb(n, k) for k in range(self.worse, n + 1)) / 2**n


@dataclass(frozen=True)
class LabelChanges:
    """A label's changed decisions on the samples that carry it and on those that do not."""

    positives: Changes
    negatives: Changes

    @property
    def p_value(self) -> float:
        return min(self.positives.p_value, self.negatives.p_value)

    def __str__(self) -> str:
        return (f"{self.positives.worse} found->missed vs {self.positives.better} "
                f"missed->found, {self.negatives.worse} new false alarms vs "
                f"{self.negatives.better} cleared")


def label_changes(current: np.ndarray, candidate: np.ndarray, targets: np.ndarray,
                  names: list[str] | tuple[str, ...]) -> dict[str, LabelChanges]:
    """Per label, the changes between two (N, L) decision arrays against (N, L) targets."""
    truth = targets >= 0.5
    was, now = current.astype(bool) == truth, candidate.astype(bool) == truth
    out = {}
    for j, name in enumerate(names):
        worse, better = was[:, j] & ~now[:, j], ~was[:, j] & now[:, j]
        pos = truth[:, j]
        out[name] = LabelChanges(Changes(int(worse[pos].sum()), int(better[pos].sum())),
                                 Changes(int(worse[~pos].sum()), int(better[~pos].sum())))
    return out


@dataclass(frozen=True)
class Comparison:
    current: Scores
    candidate: Scores
    margin: float
    max_label_drop: float
    promote: bool
    reasons: tuple[str, ...]
    deltas: dict[str, float] = field(default_factory=dict)
    collapse: str | None = None

    @property
    def macro_delta(self) -> float:
        return self.candidate.macro_f1 - self.current.macro_f1

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": asdict(self.current),
            "candidate": asdict(self.candidate),
            "macro_f1_delta": round(self.macro_delta, 6),
            "per_label_delta": self.deltas,
            "margin": self.margin,
            "max_label_drop": self.max_label_drop,
            "promote": self.promote,
            "reasons": list(self.reasons),
            "collapse": self.collapse,
        }


def collapse_reason(decisions: np.ndarray, targets: np.ndarray, labels: tuple[str, ...] |
                    list[str], samples: str = "held-out samples") -> str | None:
    """Why ``decisions`` (N, L reported labels) is a collapse, or None: every sample gets the
    same answer although ``targets`` hold at least two different label sets."""
    truths = {tuple(row) for row in (targets >= 0.5).tolist()}
    answers = {tuple(bool(v) for v in row) for row in decisions.tolist()}
    if len(decisions) < 2 or len(answers) != 1 or len(truths) < 2:
        return None
    said = [labels[j] for j, on in enumerate(next(iter(answers))) if on]
    return (f"collapse: the candidate answers {'+'.join(said) or 'no label'} for all "
            f"{len(decisions)} {samples}, which carry {len(truths)} different label "
            "sets")


def compare(current: Scores, candidate: Scores, margin: float, max_label_drop: float,
            collapse: str | None = None, changes: dict[str, LabelChanges] | None = None
            ) -> Comparison:
    deltas = {
        name: round(candidate.per_label_f1[name] - current.per_label_f1.get(name, 0.0), 6)
        for name in candidate.per_label_f1
    }
    reasons = []
    delta = candidate.macro_f1 - current.macro_f1
    ok_macro = delta > 0 and delta >= margin - 1e-12
    if ok_macro:
        reasons.append(f"macro-F1 {current.macro_f1:.3f} -> {candidate.macro_f1:.3f} "
                       f"({delta:+.3f}, margin {margin:.3f})")
    else:
        reasons.append(f"macro-F1 {current.macro_f1:.3f} -> {candidate.macro_f1:.3f} "
                       f"({delta:+.3f}) does not beat the current model by the margin "
                       f"{margin:.3f}")
    losers = {}
    for name, d in sorted(deltas.items()):
        if -d <= max_label_drop + 1e-12:
            continue
        seen = (changes or {}).get(name)
        still_found = candidate.per_label_f1[name] > 0
        if seen is not None and still_found and seen.p_value > ALPHA:
            reasons.append(f"label {name} loses {-d:.3f} F1, within noise: {seen} "
                           f"(p={seen.p_value:.2f} > {ALPHA})")
            continue
        losers[name] = d
        reasons.append(f"label {name} loses {-d:.3f} F1 (at most {max_label_drop:.3f} allowed)")
    if collapse:
        reasons.insert(0, collapse)
    return Comparison(current, candidate, margin, max_label_drop,
                      ok_macro and not losers and not collapse, tuple(reasons), deltas,
                      collapse)
