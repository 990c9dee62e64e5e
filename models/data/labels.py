"""CODEBRIM's label set, the one ``models.config`` gives every model by default.

``background`` means "no defect" and never co-occurs with a defect.
"""

from models.config import CODEBRIM_LABELS

LABELS: tuple[str, ...] = CODEBRIM_LABELS
BACKGROUND = LABELS[0]
DEFECTS: tuple[str, ...] = LABELS[1:]


def multi_hot(
    labels: frozenset[str] | set[str], label_set: tuple[str, ...] = LABELS
) -> list[float]:
    """A 0/1 vector in ``label_set`` order."""
    return [1.0 if name in labels else 0.0 for name in label_set]
