"""Frame-level thresholds: calibrated on other sites' generated frames, as the uplink decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.artifact import Artifact
from models.backends.select import create_backend
from models.framecal import frame_probs, frame_thresholds, targets_of
from models.pipeline import Pipeline, TileOptions

SIZE = (96, 64)


def f1(said: np.ndarray, true: np.ndarray) -> float:
    tp = float((said & true).sum())
    return 2 * tp / max(2 * tp + float((said & ~true).sum()) + float((~said & true).sum()), 1)


def test_frame_thresholds_are_at_least_as_good_on_frames_as_the_card(
        tiny_artifact: Artifact, tmp_path: Path) -> None:
    sites = [997, 998]
    thresholds = frame_thresholds(tiny_artifact, sites, 3, tmp_path, downscale=2, size=SIZE)
    labels = tiny_artifact.card.labels
    assert set(thresholds) == set(labels)
    assert all(0.05 <= v <= 0.95 for v in thresholds.values())
    # The same frames as the uplink decides them (per-frame maximum over tiles, downscale 2).
    pipeline = Pipeline(tiny_artifact, create_backend(tiny_artifact, "onnxruntime"),
                        TileOptions(downscale=2))
    rows = [frame_probs(pipeline, s, 3, *SIZE, tmp_path) for s in sites]
    probs = np.concatenate([p for p, _ in rows])
    true = targets_of([t for _, ts in rows for t in ts], labels) >= 0.5
    card = tiny_artifact.card.thresholds
    for j, name in enumerate(labels):
        ours = f1(probs[:, j] >= thresholds[name], true[:, j])
        assert ours >= f1(probs[:, j] >= card.get(name, 0.5), true[:, j]) - 1e-9, name


def test_frames_are_generated_once_and_reused(tiny_artifact: Artifact, tmp_path: Path) -> None:
    frame_thresholds(tiny_artifact, [996], 2, tmp_path, size=SIZE)
    made = sorted(tmp_path.rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in made]
    frame_thresholds(tiny_artifact, [996], 2, tmp_path, downscale=2, size=SIZE)
    assert len(made) == 2
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.jpg"))] == stamps
