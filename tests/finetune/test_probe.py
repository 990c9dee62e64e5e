"""The default few-shot method (the calibrated probe), collapse refusal and the background rule,
on real ``run_job`` calls with tiny models and hand-made images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.decide import decide, decide_many
from models.finetune.gate import collapse_reason, compare
from models.finetune.job import JobSpec, run_job
from models.finetune.methods import default_method
from models.finetune.probe import best_thresholds, fit_probe
from models.training.metrics import Scores
from tests.finetune.conftest import concrete, make_parent

LABELS = ("background", "crack", "spallation", "efflorescence", "exposed_bars",
          "corrosion_stain")


def crack_set(root: Path, per_class: int = 24, size: int = 32, seed: int = 0
              ) -> list[tuple[str, tuple[str, ...]]]:
    """Plain noisy concrete, and the same with a dark jagged line across it: a clear signal."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(2 * per_class):
        cracked = i % 2 == 1
        image = concrete(rng, size, size, (0, size) if cracked else None)
        path = root / f"{i:03d}.png"
        image.save(path)
        samples.append((str(path), ("crack",) if cracked else ("background",)))
    return samples


def spec_for(parent: Path, samples: list[tuple[str, tuple[str, ...]]], out: Path,
             **kw: object) -> JobSpec:
    return JobSpec(parent=str(parent), samples=tuple(samples), labels=LABELS, out=str(out),
                   name="crack-vit", version="1.0.1", margin=0.0, max_label_drop=1.0,
                   **kw)  # type: ignore[arg-type]


def test_the_default_method_is_the_probe_in_the_few_shot_range():
    assert default_method(40, gpu=False) == "linear"
    assert default_method(400, gpu=False) == "linear"
    assert default_method(400, gpu=True) == "linear"
    assert default_method(5000, gpu=True) == "full"


def test_the_probe_learns_cracks_against_plain_background(tmp_path: Path, encoder: Path):
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = crack_set(tmp_path / "set")
    result = run_job(spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60))
    comparison = result.comparison
    assert result.method == "linear" and result.details["views"] >= 2
    gain = comparison.candidate.macro_f1 - comparison.current.macro_f1
    assert gain >= 0.1, comparison
    assert comparison.promote is True and comparison.collapse is None
    assert set(result.details["fitted"]) == {"background", "crack"}


def test_a_collapsed_candidate_is_refused_with_the_reason(tmp_path: Path):
    """An encoder that sees every image the same (zero patch embedding): the candidate can
    only give one answer, and the gate says so."""
    from models.artifact import write_artifact
    from models.config import tiny_config
    from models.vit import build_model

    model = build_model(tiny_config(), 0)
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
    write_artifact(model, tmp_path / "blind", name="crack-vit", version="1.0.0")
    samples = crack_set(tmp_path / "set", per_class=12)
    result = run_job(spec_for(tmp_path / "blind", samples, tmp_path / "cand", epochs=20))
    comparison = result.comparison
    assert comparison.promote is False
    assert comparison.collapse and comparison.reasons[0] == comparison.collapse
    assert "for all 24 samples judged out of fold, which carry 2 different label sets" in \
        comparison.collapse
    assert result.candidate is None


def test_collapse_is_one_answer_for_samples_that_differ():
    targets = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    same = np.array([[False, True]] * 3)
    assert collapse_reason(same, targets, ("background", "crack")) == (
        "collapse: the candidate answers crack for all 3 held-out samples, which carry 2 "
        "different label sets")
    assert collapse_reason(np.array([[True, False], [False, True], [False, True]]), targets,
                           ("background", "crack")) is None
    assert collapse_reason(same, np.array([[0, 1]] * 3, dtype=np.float32),
                           ("background", "crack")) is None
    scores = Scores({"crack": 0.67}, 0.67, 0.67)
    refused = compare(Scores({"crack": 0.0}, 0.0, 0.0), scores, 0.01, 0.05,
                      collapse=collapse_reason(same, targets, ("background", "crack")))
    assert not refused.promote and refused.reasons[0].startswith("collapse:")


def test_background_is_reported_only_where_no_defect_is():
    labels = ("background", "crack", "rust")
    thr = {"background": 0.5, "crack": 0.4, "rust": 0.9}
    assert decide([0.9, 0.45, 0.1], labels, thr) == ["crack"]
    assert decide([0.1, 0.2, 0.85], labels, thr) == ["background"]
    assert decide([0.9, 0.2, 0.95], labels, thr) == ["rust"]
    many = decide_many(np.random.default_rng(0).random((200, 3), dtype=np.float32), labels,
                       thr)
    assert (many[:, 0] != many[:, 1:].any(axis=1)).all()
    assert decide([0.9, 0.1], ("crack", "rust"), {}) == ["crack"]


def test_thresholds_sit_between_the_classes_out_of_fold():
    probs = np.array([[0.1], [0.2], [0.3], [0.6], [0.7], [0.8]], dtype=np.float32)
    targets = np.array([[0], [0], [0], [1], [1], [1]], dtype=np.float32)
    thr, f1 = best_thresholds(probs, targets)
    assert 0.3 < thr[0] < 0.6 and f1[0] == 1.0


def test_the_probe_stops_early_and_fits_only_labels_it_can(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = np.zeros((40, 3), dtype=np.float32)
    y[:20, 0] = 1
    y[20:, 1] = 1
    feats = torch.from_numpy(rng.normal(size=(3, 40, 8)).astype(np.float32))
    feats[..., 0] += torch.from_numpy(np.where(y[:, 1] > 0, 3.0, -3.0).astype(np.float32))
    fit = fit_probe(feats, y, seed=0)
    assert fit.fitted == (0, 1)
    assert 5 <= fit.epochs <= 200 and fit.cv_f1 > 0.9
    logits = torch.from_numpy(feats[0].numpy()) @ fit.weight.t() + fit.bias
    assert ((logits[:, 1] > 0).numpy() == (y[:, 1] > 0)).mean() > 0.9
    with pytest.raises(ValueError, match="both positive and negative"):
        fit_probe(feats, np.ones((40, 1), dtype=np.float32))
