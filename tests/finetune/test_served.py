"""Samples larger than the model's input are learnt, calibrated and gated as served: the
pipeline's tiles and the maximum over them (``models.finetune.served``), with tiny models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.artifact import load_artifact, write_artifact
from models.backends import create_backend
from models.decide import PER_TILE, Decision, image_probs
from models.finetune.job import load_samples, predict_served, run_job
from models.finetune.probe import fit_probe
from models.finetune.served import MAX_TILES, Tiles, sample_tiles
from models.images import decode_image
from models.pipeline import Pipeline
from tests.finetune.conftest import make_parent
from tests.finetune.test_probe import spec_for


def photo_set(root: Path, per_class: int = 24, size: int = 64, seed: int = 0
              ) -> list[tuple[str, tuple[str, ...]]]:
    """Noisy grey "photos" twice the tiny model's input; a cracked one has a dark jagged line
    in one random quadrant only, so only the tiles over that quadrant show it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(2 * per_class):
        grey = rng.integers(110, 170)
        pixels = np.clip(grey + rng.normal(0, 12, (size, size, 1)), 0, 255).repeat(3, axis=2)
        image = Image.fromarray(pixels.astype(np.uint8))
        cracked = i % 2 == 1
        if cracked:
            half = size // 2
            x0, y0 = (int(v) * half for v in rng.integers(0, 2, 2))
            points = [(x0, y0 + int(rng.integers(4, half - 4)))]
            for x in range(x0 + 5, x0 + half, 5):
                points.append((x, int(np.clip(points[-1][1] + rng.integers(-4, 5), y0,
                                              y0 + half - 1))))
            ImageDraw.Draw(image).line(points, fill=(30, 30, 30), width=2)
        path = root / f"{i:03d}.png"
        image.save(path)
        samples.append((str(path), ("crack",) if cracked else ("background",)))
    return samples


def pipeline_of(artifact_dir: Path) -> Pipeline:
    artifact = load_artifact(artifact_dir)
    return Pipeline(artifact, create_backend(artifact, "torch", "fp32"))


def test_a_sample_is_the_tiles_the_pipeline_cuts(tmp_path: Path):
    pipeline = pipeline_of(make_parent(tmp_path / "parent"))
    pre = pipeline.card.preprocessing
    rng = np.random.default_rng(0)
    for size in (pre.input_size, 2 * pre.input_size, 3 * pre.input_size - 5):
        pixels = rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        served = pipeline.tile(decode_image(buffer.getvalue())).tiles
        assert len(served) <= MAX_TILES
        np.testing.assert_array_equal(sample_tiles(pixels, pre), served)


def test_a_sample_smaller_than_the_input_or_with_too_many_tiles_is_resized(tmp_path: Path):
    pre = load_artifact(make_parent(tmp_path / "parent")).card.preprocessing
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (pre.input_size - 4, 2 * pre.input_size, 3), dtype=np.uint8)
    huge = rng.integers(0, 256, (8 * pre.input_size, 8 * pre.input_size, 3), dtype=np.uint8)
    for pixels in (small, huge):
        tiles = sample_tiles(pixels, pre)
        assert tiles.shape == (1, pre.input_size, pre.input_size, 3)
        expected = Image.fromarray(pixels).resize((pre.input_size, pre.input_size),
                                                  Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(tiles[0], np.asarray(expected))


def test_selected_tiles_keep_their_samples_and_an_image_is_the_max_over_its_tiles():
    per_sample = [np.full((count, 2, 2, 3), value, np.uint8)
                  for count, value in ((1, 10), (4, 20), (2, 30))]
    tiles = Tiles.of(per_sample)
    chosen = tiles.select(np.array([2, 0]))
    assert chosen.owner.tolist() == [0, 0, 1]
    assert chosen.tiles[:, 0, 0, 0].tolist() == [30, 30, 10]
    probs = np.random.default_rng(2).random((len(tiles.tiles), 3)).astype(np.float32)
    expected = np.stack([probs[tiles.owner == i].max(axis=0) for i in range(3)])
    labels = ("a", "b", "c")
    np.testing.assert_array_equal(image_probs(probs, tiles.owner, 3, labels, PER_TILE), expected)


def test_one_tile_per_sample_fits_exactly_as_without_owners():
    targets = np.zeros((24, 2), np.float32)
    targets[np.arange(24), np.arange(24) % 2] = 1
    views = torch.randn(3, 24, 8, generator=torch.Generator().manual_seed(3))
    views[:, :, 0] += torch.from_numpy(targets[:, 1] * 2)
    plain = fit_probe(views, targets, seed=0, max_epochs=40)
    owned = fit_probe(views, targets, seed=0, max_epochs=40, owner=np.arange(24))
    assert torch.equal(plain.weight, owned.weight) and torch.equal(plain.bias, owned.bias)
    np.testing.assert_array_equal(plain.thresholds, owned.thresholds)
    assert plain.epochs == owned.epochs


def test_the_probe_learns_a_defect_in_one_tile_of_a_photo(tmp_path: Path, encoder: Path):
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = photo_set(tmp_path / "photos")
    spec = spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60)
    result = run_job(spec)
    comparison = result.comparison
    pre = load_artifact(parent).card.preprocessing
    per_photo = len(sample_tiles(np.asarray(Image.open(samples[0][0])), pre))
    assert per_photo > 1 and result.details["tiles"] == per_photo * result.train
    gain = comparison.candidate.macro_f1 - comparison.current.macro_f1
    assert gain >= 0.1, comparison
    assert comparison.promote is True and comparison.collapse is None
    # The labels the probe chose to decide on the mean over tiles are on the card, and the
    # pipeline serves the candidate exactly as the job judged it.
    assert result.candidate is not None
    candidate = load_artifact(Path(result.candidate))
    assert candidate.card.decision.mean == tuple(result.details["averaged"])
    data = load_samples(spec, pre)
    ours = predict_served(candidate.build_model(), data.tiles, len(samples), pre, "cpu",
                          candidate.card.labels, candidate.card.decision)
    pipeline = pipeline_of(Path(result.candidate))
    for i, (path, _) in enumerate(samples[:6]):
        served = pipeline.run(Path(path).read_bytes()).probs
        np.testing.assert_allclose(ours[i], [served[n] for n in candidate.card.labels],
                                   atol=1e-4)


def test_without_cross_validation_a_label_the_probe_fits_stops_being_averaged(
        tmp_path: Path, encoder: Path):
    """Site adaptation turns the gate's out-of-fold judgement off, so the probe does not
    choose averaged labels: the labels it fits are decided on the maximum over tiles, and only
    those it could not fit keep the parent's way (their head rows are the parent's)."""
    plain = make_parent(tmp_path / "plain", encoder=encoder)
    parent = tmp_path / "parent"
    write_artifact(load_artifact(plain).build_model(), parent, name="crack-vit",
                   version="1.0.0", decision=Decision(mean=("crack", "spallation")))
    samples = photo_set(tmp_path / "photos", per_class=8)
    result = run_job(spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=20,
                              adapt_steps=1, always_export=True))
    assert "gate_folds" not in result.details and result.details["averaged"] == []
    assert "crack" in result.details["fitted"]
    assert result.candidate is not None
    assert load_artifact(Path(result.candidate)).card.decision.mean == ("spallation",)


def test_the_gate_scores_samples_as_the_pipeline_serves_them(tmp_path: Path,
                                                              encoder: Path):
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = photo_set(tmp_path / "photos", per_class=4)
    artifact = load_artifact(parent)
    pre = artifact.card.preprocessing
    data = load_samples(spec_for(parent, samples, tmp_path / "cand"), pre)
    model = artifact.build_model()
    ours = predict_served(model, data.tiles, len(samples), pre, "cpu", artifact.card.labels,
                          artifact.card.decision)
    pipeline = pipeline_of(parent)
    for i, (path, _) in enumerate(samples):
        result = pipeline.run(Path(path).read_bytes())
        theirs = [result.probs[label] for label in artifact.card.labels]
        np.testing.assert_allclose(ours[i], theirs, atol=1e-4)
