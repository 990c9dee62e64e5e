"""The gate judges the site's task (the labels its samples carry), and for the probe every
labeled sample out of fold (``models.finetune.crossval``), with tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifact import load_artifact, write_artifact
from models.decide import PER_TILE
from models.finetune.crossval import averaged_labels, merged, out_of_fold, outer_folds, shifted
from models.finetune.job import evaluate, run_job, task_labels
from models.finetune.probe import WIDE_POOL, ProbeFit, fit_probe
from tests.finetune.conftest import make_parent
from tests.finetune.test_probe import LABELS, crack_set, spec_for


def test_the_task_is_the_labels_the_samples_carry() -> None:
    train = np.zeros((4, 6), dtype=np.float32)
    train[:2, 0] = train[2:, 3] = 1
    held = np.zeros((2, 6), dtype=np.float32)
    held[0, 1] = 1
    assert task_labels(train).tolist() == [0, 3]
    assert task_labels(train, held).tolist() == [0, 1, 3]


def test_background_is_decided_from_the_task_labels_only() -> None:
    """A parent label the site never labeled (spallation) fires on every sample: it neither
    hides background nor counts in the scores."""
    probs = np.full((4, 6), 0.1, dtype=np.float32)
    probs[:, LABELS.index("spallation")] = 0.9
    probs[2:, LABELS.index("crack")] = 0.8
    targets = np.zeros((4, 6), dtype=np.float32)
    targets[:2, 0] = targets[2:, 1] = 1
    thresholds = dict.fromkeys(LABELS, 0.5)
    task = task_labels(targets)
    scores, decisions = evaluate(probs, targets, LABELS, thresholds, task, task)
    assert scores.per_label_f1 == {"background": 1.0, "crack": 1.0}
    assert decisions[:, 0].tolist() == [True, True, False, False]
    assert not decisions[:, LABELS.index("spallation")].any()
    every = np.arange(len(LABELS))
    old, _ = evaluate(probs, targets, LABELS, thresholds, task, every)
    assert old.per_label_f1["background"] == 0.0


def test_each_sample_is_decided_by_a_fit_that_never_saw_it() -> None:
    rng = np.random.default_rng(0)
    n, tiles = 24, 2
    targets = np.zeros((n, 2), dtype=np.float32)
    targets[::2, 0] = targets[1::2, 1] = 1
    owner = np.repeat(np.arange(n), tiles)
    feats = rng.normal(size=(2, n * tiles, 5)).astype(np.float32)
    feats[..., 0] = owner  # which sample a row belongs to, read back below
    feats[..., 1] += np.where(targets[owner, 1] > 0, 4.0, -4.0)
    views = torch.from_numpy(feats)
    seen: list[set[int]] = []

    def fit(v: torch.Tensor, y: np.ndarray, own: np.ndarray) -> tuple[str, ProbeFit]:
        seen.append({int(i) for i in v[0, :, 0].tolist()})
        return WIDE_POOL, fit_probe(v, y, 0, 200, own)

    base = shifted(np.full((n, 2), 0.2, dtype=np.float32), np.full(2, 0.5, np.float32))
    final = fit(views, targets, owner)
    judged = out_of_fold(views, targets, owner, base, 0, fit, final, ("a", "b"), PER_TILE)
    fold = outer_folds(targets, 0)
    assert judged.folds == fold.max() + 1 >= 2
    for f, samples in enumerate(seen[1:]):
        assert samples == set(np.flatnonzero(fold != f).tolist())
    assert seen[0] == set(range(n))
    said = judged.probs[:, 1] >= 0.5
    assert (said == (targets[:, 1] > 0)).mean() >= 0.9  # the signal column separates


def test_a_real_gain_on_the_site_task_is_promoted_whatever_other_labels_say(
        tmp_path: Path, encoder: Path) -> None:
    """The parent's spallation fires on every photo (a label the site never labeled, as the
    foundation model's CODEBRIM labels do on real concrete). The gate still sees the
    parent's background, judges all 48 samples out of fold, and promotes the candidate that
    learnt cracks."""
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    artifact = load_artifact(parent)
    model = artifact.build_model()
    with torch.no_grad():
        model.head.bias[LABELS.index("spallation")] = 6.0
    write_artifact(model, tmp_path / "loud", name="crack-vit", version="1.0.0")
    samples = crack_set(tmp_path / "set")
    result = run_job(spec_for(tmp_path / "loud", samples, tmp_path / "cand", seed=1,
                              epochs=60))
    comparison = result.comparison
    assert result.held_out == result.train == len(samples)
    assert result.details["gate_folds"] >= 2
    # Every sample is background to a parent that finds no crack: F1 of "all background"
    # on a half-background set.
    assert comparison.current.per_label_f1["background"] > 0.6
    assert set(comparison.current.per_label_f1) == {"background", "crack"}
    gain = comparison.candidate.macro_f1 - comparison.current.macro_f1
    assert gain >= 0.1, comparison
    assert comparison.promote is True and result.candidate is not None


def test_a_label_spread_over_the_tiles_is_averaged_and_a_spot_is_not() -> None:
    """Label 0 shows weakly in every tile of its samples (damage spread over the surface),
    label 1 strongly in one tile (a spot): out of fold, the mean over the tiles decides the
    first better and the maximum the second, and the job's choice says so."""
    rng = np.random.default_rng(4)
    n, tiles = 64, 4
    targets = np.zeros((n, 2), dtype=np.float32)
    targets[rng.permutation(n)[: n // 2], 0] = 1
    targets[rng.permutation(n)[: n // 2], 1] = 1
    owner = np.repeat(np.arange(n), tiles)
    feats = rng.normal(size=(2, n * tiles, 6)).astype(np.float32)
    feats[..., 0] += 0.8 * targets[owner, 0]
    spot = np.arange(n) * tiles + rng.integers(0, tiles, n)
    feats[:, spot, 1] += 5.0 * targets[:, 1]
    views = torch.from_numpy(feats)

    def fit(v: torch.Tensor, y: np.ndarray, own: np.ndarray, on_means: bool) -> ProbeFit:
        return fit_probe(v, y, 0, 100, own, averaged=on_means)

    labels = ("spread", "spot")
    base = shifted(np.full((n, 2), 0.2, dtype=np.float32), np.full(2, 0.5, np.float32))
    finals = (fit(views, targets, owner, False), fit(views, targets, owner, True))
    assert finals[1].averaged and (finals[1].thresholds == 0.5).all()
    chosen = averaged_labels(views, targets, owner, base, 0, fit, WIDE_POOL, finals, labels,
                             PER_TILE)
    assert chosen == (0,)
    both = merged(finals[0], finals[1], chosen)
    assert torch.equal(both.weight[0], finals[1].weight[0])
    assert torch.equal(both.weight[1], finals[0].weight[1])
    assert both.thresholds.tolist() == [0.5, float(finals[0].thresholds[1])]
    # A label a fold could not fit (one class only) is not taken from either fit.
    only_spot = fit(views, targets * np.array([0, 1], np.float32), owner, False)
    assert merged(only_spot, finals[1], chosen) is only_spot
