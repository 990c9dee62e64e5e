"""Detections against the generator's ground truth: precision and recall over frame-label pairs.

A frame's truth is the set of defect labels among its boxes in ``boxes.json`` (what
``spoke-hub data generate --frames`` writes); its detections are the defect labels the appliance
reported. Every (frame, defect label) pair is a true positive, a false positive or a false
negative; "background" is no detection and is not counted. With no detection at all precision
is 1 (nothing wrong was said); with nothing to find, recall is 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import DataError

BACKGROUND = "background"


@dataclass(frozen=True)
class GroundTruth:
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    frames: int

    def line(self) -> str:
        return (f"detections vs ground truth: precision {self.precision:.2f} "
                f"recall {self.recall:.2f}")


def truth_of(boxes: Mapping[str, object]) -> dict[str, frozenset[str]]:
    """Each frame's defect labels from a parsed ``boxes.json``."""
    out: dict[str, frozenset[str]] = {}
    for name, entry in boxes.items():
        try:
            labels = {str(b["label"]) for b in entry["boxes"]}  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise DataError(f"boxes.json: frame {name!r} has no readable boxes") from exc
        out[name] = frozenset(labels - {BACKGROUND})
    return out


def truth_by_content(frames: Path) -> dict[str, frozenset[str]]:
    """Truth keyed by each frame file's sha256, the id the uplink gives an image."""
    path = frames / "boxes.json"
    try:
        boxes = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the ground truth ({exc})") from exc
    out = {}
    for name, labels in truth_of(boxes).items():
        try:
            out[hashlib.sha256((frames / name).read_bytes()).hexdigest()] = labels
        except OSError as exc:
            raise DataError(f"{frames / name}: listed in boxes.json but unreadable") from exc
    return out


def compare_frames(detected: Mapping[str, Iterable[str]],
                   truth: Mapping[str, Iterable[str]]) -> GroundTruth:
    """Pairs over the frames present in both mappings."""
    tp = fp = fn = 0
    frames = sorted(set(detected) & set(truth))
    for frame in frames:
        said = set(detected[frame]) - {BACKGROUND}
        true = set(truth[frame]) - {BACKGROUND}
        tp += len(said & true)
        fp += len(said - true)
        fn += len(true - said)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return GroundTruth(round(precision, 4), round(recall, 4), tp, fp, fn, len(frames))
