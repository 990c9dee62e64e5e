"""A fine-tune of a parent that decides per frame: calibrated and judged on whole frames.

The fleet reports a label per drone frame (the maximum over its tiles), so a parent whose card
says so must give a candidate calibrated for that decision and judged on it; a candidate that
would do worse on the site's frames is refused. Real ``run_job`` calls, tiny models, frames of
hand-made concrete with and without a crack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import DataError
from models.artifact import load_artifact, write_artifact
from models.backends.select import create_backend
from models.decide import Decision
from models.finetune.heldout import load_frames
from models.finetune.job import load_pixels, predict_served, run_job
from models.pipeline import Pipeline, TileOptions
from tests.finetune.conftest import concrete, make_parent
from tests.finetune.test_probe import crack_set, spec_for

FRAME = (96, 64)


def crack_frames(root: Path, count: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """``count`` frames of three tiles' width, every other one with a crack in one third."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(count):
        cracked = i % 2 == 1
        third = int(rng.integers(0, 3)) * 32
        path = root / f"frame_{i:03d}.jpg"
        concrete(rng, *FRAME, (third, third + 32) if cracked else None).save(path, quality=95)
        frames.append((str(path), ("crack",) if cracked else ("background",)))
    return frames


def per_frame(parent: Path, out: Path) -> Path:
    """``parent``'s weights and thresholds under a card that decides per frame."""
    art = load_artifact(parent)
    write_artifact(art.build_model(), out, name=art.card.name, version="1.0.0",
                   labels=art.card.labels, thresholds=art.card.thresholds,
                   decision=Decision("frame", 1))
    return out


def test_frame_decisions_are_the_serving_pipelines_maxima(tmp_path: Path, encoder: Path):
    """The job cuts a frame as the uplink does and takes each label's maximum over its tiles."""
    art = load_artifact(encoder)
    frames = crack_frames(tmp_path / "frames", 4, seed=5)
    held, skipped = load_frames(frames, art.card.labels, art.card.preprocessing,
                                Decision("frame", 2), load_pixels)
    assert skipped == [] and len(held) == 4
    ours = predict_served(art.build_model(), held.tiles, 4, art.card.preprocessing, "cpu",
                          art.card.labels, Decision("frame", 2))
    pipeline = Pipeline(art, create_backend(art, "onnxruntime"), TileOptions(downscale=2))
    for row, (path, _) in zip(ours, frames, strict=True):
        served = pipeline.run(Path(path).read_bytes()).probs
        assert row == pytest.approx([served[lab] for lab in art.card.labels], abs=1e-3)


def test_a_frame_parent_gives_a_candidate_calibrated_and_judged_on_frames(
        tmp_path: Path, encoder: Path):
    parent = per_frame(make_parent(tmp_path / "p0", encoder=encoder), tmp_path / "parent")
    samples = crack_set(tmp_path / "tiles") + crack_frames(tmp_path / "frames", 16, seed=1)
    result = run_job(spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60))
    frames = result.details["frames"]
    assert frames["calibration"] + frames["held_out"] == 16
    assert result.held_out == frames["held_out"] and result.train == 48
    assert "crack" in frames["calibrated"]
    comparison = result.comparison
    assert comparison.promote is True, comparison.reasons
    assert comparison.candidate.macro_f1 > comparison.current.macro_f1
    assert result.candidate is not None
    card = load_artifact(Path(result.candidate)).card
    assert card.decision == Decision("frame", 1)


def test_a_candidate_worse_on_the_sites_frames_is_refused(tmp_path: Path, encoder: Path):
    """A parent that finds the cracks in frames, and site tiles labeled at random: the
    candidate is judged on the frames, loses there, and is refused."""
    tiles = crack_set(tmp_path / "tiles")
    learned = run_job(spec_for(make_parent(tmp_path / "p0", encoder=encoder), tiles,
                               tmp_path / "crack", seed=1, epochs=60))
    assert learned.candidate is not None
    parent = per_frame(Path(learned.candidate), tmp_path / "parent")
    rng = np.random.default_rng(4)
    noise = [(path, ("crack",) if rng.random() < 0.5 else ("background",)) for path, _ in tiles]
    frames = crack_frames(tmp_path / "frames", 16, seed=1)
    result = run_job(spec_for(parent, noise + frames, tmp_path / "cand", seed=1, epochs=60))
    comparison = result.comparison
    assert comparison.current.per_label_f1["crack"] > 0.5
    assert comparison.promote is False
    assert comparison.candidate.macro_f1 < comparison.current.macro_f1, comparison.reasons
    assert any("does not beat the current model" in r for r in comparison.reasons)
    assert result.candidate is None


def test_a_frame_parent_without_labeled_frames_is_refused_before_training(
        tmp_path: Path, encoder: Path):
    parent = per_frame(make_parent(tmp_path / "p0", encoder=encoder), tmp_path / "parent")
    with pytest.raises(DataError, match=r"decides per frame .* label whole frames"):
        run_job(spec_for(parent, crack_set(tmp_path / "tiles"), tmp_path / "cand"))
    assert not (tmp_path / "cand").exists()


def test_too_few_labeled_frames_are_refused_by_name(tmp_path: Path, encoder: Path):
    parent = per_frame(make_parent(tmp_path / "p0", encoder=encoder), tmp_path / "parent")
    samples = crack_set(tmp_path / "tiles") + crack_frames(tmp_path / "frames", 4, seed=1)
    with pytest.raises(DataError, match=r"labeled frames: 4 labeled sample\(s\)"):
        run_job(spec_for(parent, samples, tmp_path / "cand"))
