"""Pre-training: the MAE task, the artifact it writes, budgets, and resuming after kill -9."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from appliance.errors import DataError
from models.artifact import WEIGHTS_FILE, load_artifact
from models.config import tiny_config
from models.data import LABELS
from models.training.loop import Budget, choose_settings, train
from models.training.mae import MaskedAutoencoder
from models.training.pretrain import PretrainConfig, fresh_head, pretrain
from models.vit import build_model
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "preset": "tiny",
    "domains": (1, 2),
    "tiles_per_domain": 24,
    "batch_size": 8,
    "precision": "fp32",
    "threads": 1,
}


def quiet(_: str) -> None:
    pass


def test_mae_patchify_matches_the_patch_grid() -> None:
    mae = MaskedAutoencoder(build_model(tiny_config(), seed=0))
    imgs = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # patch 5 is row 1, column 1: pixel (8, 8) of channel 0 is its first value
    assert patches[0, 5, 0] == imgs[0, 0, 8, 8]


def test_mae_loss_is_reproducible_with_a_seeded_generator() -> None:
    mae = MaskedAutoencoder(build_model(tiny_config(), seed=0))
    x = torch.randn(4, 3, 32, 32)
    a = mae(x, torch.Generator().manual_seed(3))
    b = mae(x, torch.Generator().manual_seed(3))
    c = mae(x, torch.Generator().manual_seed(4))
    assert a.item() == b.item() != c.item()


def test_mae_pretraining_lowers_reconstruction_loss(tmp_path: Path) -> None:
    cfg = PretrainConfig(method="mae", steps=40, lr=2e-3, **TINY)  # type: ignore[arg-type]
    pretrain(cfg, tmp_path / "m", progress=False, log=quiet)
    metrics = load_artifact(tmp_path / "m").card.metrics
    first = PretrainConfig(method="mae", steps=1, **TINY)  # type: ignore[arg-type]
    pretrain(first, tmp_path / "one", progress=False, log=quiet)
    assert (
        metrics["pretrain.final_loss"]
        < load_artifact(tmp_path / "one").card.metrics["pretrain.final_loss"]
    )


def test_artifact_card_records_training_and_data_seeds(tmp_path: Path) -> None:
    cfg = PretrainConfig(method="supervised", steps=4, seed=7, **TINY)  # type: ignore[arg-type]
    artifact = pretrain(cfg, tmp_path / "sup", progress=False, log=quiet)
    card = artifact.card
    assert card.labels == LABELS and card.name == "spoke-foundation-supervised"
    assert card.metrics["pretrain.steps"] == 4 and card.metrics["pretrain.supervised"] == 1
    assert (card.metrics["data.domain.0"], card.metrics["data.domain.1"]) == (1, 2)
    assert card.metrics["pretrain.seed"] == 7


def test_kept_patches_are_the_only_ones_the_blocks_see() -> None:
    model = build_model(tiny_config(), seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    every = torch.arange(16).expand(2, -1)
    assert torch.equal(model.forward_features(x, every), model.forward_features(x))
    kept = torch.tensor([[0, 5, 9], [15, 2, 7]])
    assert model.forward_features(x, kept).shape == (2, 4, model.cfg.embed_dim)
    # A kept patch's token depends on the patches kept with it, not on the dropped ones.
    other = x.clone()
    other[:, :, :8, 8:16] = 0  # patch 1, kept by neither image
    assert torch.equal(model.forward_features(other, kept), model.forward_features(x, kept))


def test_patch_dropout_is_reproducible_and_recorded(tmp_path: Path) -> None:
    cfg = PretrainConfig(method="supervised", steps=6, patch_keep=0.5, **TINY)  # type: ignore[arg-type]
    first = pretrain(cfg, tmp_path / "a", progress=False, log=quiet)
    second = pretrain(cfg, tmp_path / "b", progress=False, log=quiet)
    every = pretrain(dataclasses.replace(cfg, patch_keep=1.0), tmp_path / "c", progress=False,
                     log=quiet)
    weights = [load_file(tmp_path / name / WEIGHTS_FILE) for name in "abc"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["blocks.0.attn.qkv.weight"],
                           weights[2]["blocks.0.attn.qkv.weight"])
    assert first.card.metrics["pretrain.patch_keep"] == 0.5 == second.card.metrics[
        "pretrain.patch_keep"]
    assert every.card.metrics["pretrain.patch_keep"] == 1.0


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_a_share_of_patches_kept_outside_0_to_1_is_refused(keep: float) -> None:
    with pytest.raises(DataError, match=f"the share of patches kept, {keep}, must be over 0"):
        PretrainConfig(method="supervised", steps=1, patch_keep=keep, **TINY)  # type: ignore[arg-type]


def test_the_head_is_fresh(tmp_path: Path) -> None:
    cfg = PretrainConfig(method="supervised", steps=4, seed=7, **TINY)  # type: ignore[arg-type]
    model = pretrain(cfg, tmp_path / "sup", progress=False, log=quiet).build_model()
    reference = build_model(cfg.vit, seed=0)
    fresh_head(reference, cfg.seed + 1)
    assert torch.equal(model.head.weight, reference.head.weight)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)


def test_refuses_an_existing_output_before_training(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(DataError, match="not an empty directory"):
        pretrain(PretrainConfig(steps=1, **TINY), tmp_path / "out", log=quiet)  # type: ignore[arg-type]


def test_time_budget_stops_training() -> None:
    model = build_model(tiny_config(), seed=0)
    x = torch.randn(8, 3, 32, 32)
    start = time.monotonic()
    result = train(
        model,
        lambda s: model(x).square().mean(),
        Budget(seconds=0.5),
        lr=1e-3,
        weight_decay=0.0,
        precision="fp32",
        threads=1,
        progress=False,
        log=quiet,
    )
    assert result.steps > 1 and time.monotonic() - start < 10


def test_auto_settings_pick_a_measured_candidate() -> None:
    model = build_model(tiny_config(), seed=0)
    x = torch.randn(4, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        chosen = choose_settings(model, lambda s: model(x).square().mean(), "auto", None, trials=1)
        assert chosen.precision in ("fp32", "bf16") and chosen.threads >= 1
        assert all(p.grad is None for p in model.parameters())
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_from_other_settings_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    model = build_model(tiny_config(), seed=0)
    x = torch.randn(4, 3, 32, 32)
    kw = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "precision": "fp32",
        "threads": 1,
        "checkpoint": ckpt,
        "progress": False,
        "log": quiet,
    }
    train(model, lambda s: model(x).mean(), Budget(steps=2), fingerprint={"seed": 1}, **kw)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="other settings"):
        train(model, lambda s: model(x).mean(), Budget(steps=2), fingerprint={"seed": 2}, **kw)  # type: ignore[arg-type]


def _pretrain_cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "provisioning",
        "pretrain",
        "--preset",
        "tiny",
        "--domains",
        "1,2",
        "--tiles-per-domain",
        "24",
        "--batch-size",
        "8",
        "--steps",
        "250",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--checkpoint-every-steps",
        "5",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_resumes_after_kill_9_exactly_where_it_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.ckpt"
    proc = subprocess.Popen(
        _pretrain_cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: ckpt.exists() or proc.poll() is not None, 60,
                 "the first checkpoint (or the run's end)", 0.02)
        assert ckpt.exists(), "no checkpoint appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()

    resumed = subprocess.run(
        _pretrain_cmd(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    step = int(resumed.stdout.split("resuming from step ")[1].split()[0])
    assert 0 < step < 100
    assert not ckpt.exists(), "the checkpoint is removed once the artifact is written"

    whole = subprocess.run(
        _pretrain_cmd(tmp_path / "whole"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert whole.returncode == 0, whole.stderr
    a, b = load_file(str(out / WEIGHTS_FILE)), load_file(str(tmp_path / "whole" / WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an unbroken run"


def test_blurred_targets_drop_pixel_noise_but_keep_the_shape() -> None:
    mae = MaskedAutoencoder(build_model(tiny_config(), seed=0), target_blur=3)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    smooth = mae.smooth(noise)
    assert smooth.shape == noise.shape
    assert smooth.var() < noise.var() / 4
