"""The evaluation gate: may a candidate replace the current model? A pure function.

Both models are scored on the same held-out split, over the labels that split contains. The
candidate is promoted only if its macro-F1 beats the current one by at least ``margin`` (and is
strictly higher) and no single label's F1 drops by more than ``max_label_drop``. The comparison
is returned whichever way it went, with the reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.training.metrics import Scores


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
                    list[str]) -> str | None:
    """Why ``decisions`` (N, L reported labels) is a collapse, or None: every sample gets the
    same answer although ``targets`` hold at least two different label sets."""
    truths = {tuple(row) for row in (targets >= 0.5).tolist()}
    answers = {tuple(bool(v) for v in row) for row in decisions.tolist()}
    if len(decisions) < 2 or len(answers) != 1 or len(truths) < 2:
        return None
    said = [labels[j] for j, on in enumerate(next(iter(answers))) if on]
    return (f"collapse: the candidate answers {'+'.join(said) or 'no label'} for all "
            f"{len(decisions)} held-out samples, which carry {len(truths)} different label "
            "sets")


def compare(current: Scores, candidate: Scores, margin: float, max_label_drop: float,
            collapse: str | None = None) -> Comparison:
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
    losers = {n: d for n, d in deltas.items() if -d > max_label_drop + 1e-12}
    for name, d in sorted(losers.items()):
        reasons.append(f"label {name} loses {-d:.3f} F1 (at most {max_label_drop:.3f} allowed)")
    if collapse:
        reasons.insert(0, collapse)
    return Comparison(current, candidate, margin, max_label_drop,
                      ok_macro and not losers and not collapse, tuple(reasons), deltas,
                      collapse)
