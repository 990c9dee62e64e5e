"""Thresholds for the decision the fleet makes: a label per drone frame, not per tile.

A frame is reported with a label when the label's maximum over the frame's tiles reaches its
threshold (``models.pipeline``). A threshold calibrated for tile F1 is too low for that
maximum: a frame has tens of tiles, so a weak label fires on nearly every frame
(docs/FOUNDATION-MODEL.md, session 5). Here each label's threshold is the one with the best
frame-level F1 on generated frames of *other* sites, run through the serving pipeline at the
fleet's downscale, against the generator's boxes. The sites used are never the scored one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.artifact import Artifact
from models.backends.select import create_backend
from models.data.dataset import write_frames
from models.data.labels import multi_hot
from models.groundtruth import truth_of
from models.pipeline import Pipeline, TileOptions
from models.training.metrics import calibrate_thresholds


def frame_probs(pipeline: Pipeline, site: int, count: int, width: int, height: int,
                work: Path) -> tuple[np.ndarray, list[frozenset[str]]]:
    """(frames, labels) per-frame probabilities (maximum over tiles, as served) of ``count``
    generated frames of ``site``, and each frame's true defect labels. The frames are
    written under ``work`` once and reused."""
    out = work / f"site-{site}-{count}x{width}x{height}"
    if not out.is_dir():
        write_frames(out, site, count, width, height)
    truth = truth_of(json.loads((out / "boxes.json").read_text()))
    names = sorted(truth)
    labels = pipeline.card.labels
    probs = [pipeline.run((out / n).read_bytes()).probs for n in names]
    return np.array([[p[lab] for lab in labels] for p in probs]), [truth[n] for n in names]


def targets_of(truth: Sequence[frozenset[str]], labels: Sequence[str]) -> np.ndarray:
    """(frames, labels) multi-hot targets of each frame's true defect labels."""
    return np.array([multi_hot(t, tuple(labels)) for t in truth], dtype=np.float32)


def frame_thresholds(artifact: Artifact, sites: Sequence[int], frames: int, work: Path, *,
                     downscale: int = 1, size: tuple[int, int] = (1600, 1200)
                     ) -> dict[str, float]:
    """Per label, the threshold with the best F1 over the frames of ``sites`` (``frames``
    each, ``size`` pixels) as the uplink decides them at ``downscale``."""
    pipeline = Pipeline(artifact, create_backend(artifact, "onnxruntime"),
                        TileOptions(downscale=downscale))
    rows = [frame_probs(pipeline, s, frames, *size, work) for s in sites]
    labels = artifact.card.labels
    probs = np.concatenate([p for p, _ in rows])
    truth = [t for _, ts in rows for t in ts]
    return calibrate_thresholds(probs, targets_of(truth, labels), labels)
