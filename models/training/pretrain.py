"""Pre-training a foundation model at the hub on generated imagery from several sites.

Three methods share one loop and one data pipeline:

- ``mae``: masked autoencoding on the images alone (labels are never read), the
  self-supervised route that scales to unlabeled drone footage;
- ``supervised``: multi-label BCE on the generated labels;
- ``mae+supervised``: the first ``mae_share`` of the budget MAE, the rest supervised.

The output is a model artifact: the encoder, a head (freshly initialised, or with
``head="trained"`` the supervised one with per-label thresholds calibrated on a generated
site seen in neither phase), and a card whose metrics record the training run and the
data-generation seeds needed to repeat it. Under ``torchrun`` every phase runs data-parallel
(``models.training.distributed``); only rank 0 writes.
"""

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from appliance.errors import DataError
from models.artifact import Artifact, load_artifact, write_artifact
from models.config import PRESETS, ViTConfig, preset, tiny_config
from models.data import LABELS, tile_arrays
from models.data.dataset import GENERATOR_VERSION
from models.preprocess import Preprocessing
from models.training import distributed
from models.training.batches import (
    PatchDropout,
    TileSet,
    make_batch,
    patch_noise,
    supervised_loss,
)
from models.training.distributed import CPU, ONE, Shard
from models.training.loop import Budget, LoopResult, autocast, train
from models.training.mae import MaskedAutoencoder
from models.training.metrics import calibrate_thresholds, score_at
from models.vit import VisionTransformer, build_model

METHODS = ("mae", "supervised", "mae+supervised")
HEADS = ("fresh", "trained")
#: ``tiny`` is ``models.config.tiny_config``: seconds-long runs for tests and notebooks.
PRESET_NAMES = (*PRESETS, "tiny")


def model_config(name: str, img_size: int | None = None) -> ViTConfig:
    """A preset by name, optionally at another input size (patch size unchanged)."""
    overrides: dict[str, Any] = {"num_classes": len(LABELS)}
    if img_size is not None:
        overrides["img_size"] = img_size
    if name == "tiny":
        return tiny_config(**overrides)
    return preset(name, **overrides)


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "mae"
    preset: str = "vit-tiny-p16-112"
    img_size: int | None = None
    domains: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    tiles_per_domain: int = 800
    steps: int | None = None
    seconds: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    target_blur: int = 0
    #: Supervised steps: the share of patch tokens each training image keeps (PatchDropout).
    patch_keep: float = 1.0
    seed: int = 0
    precision: str = "auto"
    threads: int | None = None
    #: ``mae+supervised``: the share of the step (or time) budget spent on MAE.
    mae_share: float = 0.5
    head: str = "fresh"
    #: ``head="trained"``: the generated site whose tiles set each label's threshold.
    calibration_domain: int = 999
    calibration_tiles: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.head not in HEADS:
            raise DataError(f"head {self.head!r}: choose one of {', '.join(HEADS)}")
        if self.head == "trained" and self.method == "mae":
            raise DataError(
                "a trained head needs a supervised phase (method supervised or mae+supervised)"
            )
        if self.head == "trained" and self.calibration_domain in self.domains:
            raise DataError(
                f"the calibration site {self.calibration_domain} is one of the training sites"
            )
        if not 0.0 < self.mae_share < 1.0:
            raise DataError("the MAE share of the budget must be between 0 and 1")
        if not self.domains or self.tiles_per_domain < 1 or self.batch_size < 1:
            raise DataError("pre-training needs domains, tiles per domain and a batch size")
        if not 0.0 < self.mask_ratio < 1.0:
            raise DataError("the mask ratio must be between 0 and 1")
        if not 0.0 < self.patch_keep <= 1.0:
            raise DataError(
                f"the share of patches kept, {self.patch_keep}, must be over 0 and at most 1"
            )

    @property
    def budget(self) -> Budget:
        return Budget(self.steps, self.seconds)

    def phases(self) -> list[tuple[str, Budget]]:
        """Each phase's method and budget, in order."""
        if self.method != "mae+supervised":
            return [(self.method, self.budget)]
        share = self.mae_share
        steps = None if self.steps is None else round(self.steps * share)
        secs = None if self.seconds is None else self.seconds * share
        if steps is not None and not 0 < steps < (self.steps or 0):
            raise DataError(
                f"{self.steps} steps cannot be split into an MAE and a supervised phase"
            )
        rest_steps = None if self.steps is None or steps is None else self.steps - steps
        rest_secs = None if self.seconds is None or secs is None else self.seconds - secs
        return [("mae", Budget(steps, secs)), ("supervised", Budget(rest_steps, rest_secs))]

    @property
    def vit(self) -> ViTConfig:
        return model_config(self.preset, self.img_size)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (all but the speed settings)."""
        data = dataclasses.asdict(self)
        data.pop("precision")
        data.pop("threads")
        return data | {"generator_version": GENERATOR_VERSION}


def load_tiles(cfg: PretrainConfig, progress: bool) -> TileSet:
    images, targets = tile_arrays(
        cfg.domains, cfg.tiles_per_domain, cfg.vit.img_size, progress=progress
    )
    return TileSet(images, targets)


def make_task(
    cfg: PretrainConfig,
    method: str,
    model: VisionTransformer,
    tiles: TileSet,
    shard: Shard = ONE,
    device: torch.device = CPU,
) -> tuple[torch.nn.Module, Callable[[int], Tensor]]:
    """The module to optimise (DDP-wrapped under several processes) and its loss per step."""
    pre = Preprocessing(cfg.vit.img_size)
    if method == "mae":
        with torch.random.fork_rng(devices=[]):  # the decoder's init is part of the seed
            torch.manual_seed(cfg.seed + 2)
            mae = MaskedAutoencoder(model, mask_ratio=cfg.mask_ratio, target_blur=cfg.target_blur)
        model.head.requires_grad_(False)  # unused by MAE; DDP insists every trained weight is used
        net = distributed.wrap(mae.to(device))
        patches = cfg.vit.num_patches

        def mae_loss(step: int) -> Tensor:
            x, _ = make_batch(tiles, pre, cfg.batch_size, cfg.seed, step, shard=shard)
            noise = patch_noise(cfg.batch_size, patches, cfg.seed, step, shard)
            return net(x.to(device), noise=noise)

        return net, mae_loss

    model.head.requires_grad_(True)
    net = distributed.wrap(model)
    dropout = None
    if cfg.patch_keep < 1.0:
        patches = cfg.vit.num_patches
        dropout = PatchDropout(patches, max(1, round(patches * cfg.patch_keep)))
    return net, supervised_loss(net, tiles, pre, cfg.batch_size, cfg.seed, shard, device,
                                dropout)


def fresh_head(model: VisionTransformer, seed: int) -> None:
    """Replace the head by a newly initialised one, as every fine-tune should start from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.trunc_normal_(model.head.weight, std=0.02)
    torch.nn.init.zeros_(model.head.bias)


@torch.inference_mode()
def predict(model: VisionTransformer, images: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """Per-label probabilities for uint8 tiles at the model's input size."""
    model.eval()
    pre = Preprocessing(model.cfg.img_size)
    out = []
    for i in range(0, len(images), 128):
        with autocast(precision):
            out.append(torch.sigmoid(model(torch.from_numpy(pre.normalize(images[i : i + 128])))))
    return torch.cat(out).float().numpy()


def calibrate(
    model: VisionTransformer, cfg: PretrainConfig, precision: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Thresholds from the calibration site, and the card metrics they score there."""
    images, targets = tile_arrays([cfg.calibration_domain], cfg.calibration_tiles, cfg.vit.img_size)
    probs = predict(model, images, precision)
    thresholds = calibrate_thresholds(probs, targets, LABELS)
    scores = score_at(probs, targets, LABELS, thresholds)
    metrics = {
        "calibration.domain": float(cfg.calibration_domain),
        "calibration.tiles": float(cfg.calibration_tiles),
        "calibration.macro_f1": round(scores.macro_f1, 4),
    }
    metrics |= {f"calibration.f1.{k}": round(v, 4) for k, v in scores.per_label_f1.items()}
    return thresholds, metrics


def card_metrics(cfg: PretrainConfig, results: list[tuple[str, LoopResult]]) -> dict[str, float]:
    """How the model was made, for the card (its metrics hold numbers only, so the method and
    the head are 0/1 flags and the finish time is a Unix time)."""
    steps = {m: float(r.steps) for m, r in results}
    out = {
        "pretrain.mae": float("mae" in steps),
        "pretrain.supervised": float("supervised" in steps),
        "pretrain.mae_steps": steps.get("mae", 0.0),
        "pretrain.supervised_steps": steps.get("supervised", 0.0),
        "pretrain.steps": sum(steps.values()),
        "pretrain.seconds": round(sum(r.seconds for _, r in results), 3),
        "pretrain.final_loss": round(results[-1][1].final_loss, 5),
        "pretrain.bf16": float(results[-1][1].precision == "bf16"),
        "pretrain.seed": float(cfg.seed),
        "pretrain.batch_size": float(cfg.batch_size),
        "pretrain.lr": cfg.lr,
        "pretrain.img_size": float(cfg.vit.img_size),
        "pretrain.processes": float(distributed.current().world),
        "pretrain.mask_ratio": cfg.mask_ratio if "mae" in steps else 0.0,
        "pretrain.target_blur": float(cfg.target_blur) if "mae" in steps else 0.0,
        "pretrain.patch_keep": cfg.patch_keep if "supervised" in steps else 1.0,
        "pretrain.trained_head": float(cfg.head == "trained"),
        "pretrain.finished_unix": float(int(time.time())),
        "data.generator_version": float(GENERATOR_VERSION),
        "data.tiles_per_domain": float(cfg.tiles_per_domain),
    }
    out |= {f"data.domain.{i}": float(d) for i, d in enumerate(cfg.domains)}
    return out


def phase_checkpoint(checkpoint: Path | None, method: str, cfg: PretrainConfig) -> Path | None:
    """One resume file per phase: ``X.ckpt`` alone, ``X.mae.ckpt`` and ``X.supervised.ckpt``
    for two phases (a finished MAE phase is kept until the artifact is written)."""
    if checkpoint is None or len(cfg.phases()) == 1:
        return checkpoint
    return checkpoint.with_name(f"{checkpoint.stem}.{method}{checkpoint.suffix}")


def pretrain(
    cfg: PretrainConfig,
    out: Path,
    *,
    checkpoint: Path | None = None,
    name: str | None = None,
    version: str = "0.1.0",
    progress: bool = True,
    checkpoint_every_s: float = 60.0,
    checkpoint_every_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> Artifact:
    """Pre-train per ``cfg`` and write the artifact to ``out``; resumes from ``checkpoint``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty directory")
    started = time.perf_counter()
    shard = distributed.current()
    shard.check_batch(cfg.batch_size)
    device = distributed.device()
    vit = cfg.vit
    log(
        f"pretrain: {cfg.method} on {len(cfg.domains)} domains x {cfg.tiles_per_domain} "
        f"generated {vit.img_size}px tiles, ViT dim {vit.embed_dim} depth {vit.depth}"
        + (f", {shard.world} processes" if shard.world > 1 else "")
    )
    tiles = load_tiles(cfg, progress and shard.main)
    model = build_model(vit, seed=cfg.seed).to(device)
    results: list[tuple[str, LoopResult]] = []
    for method, budget in cfg.phases():
        module, loss_fn = make_task(cfg, method, model, tiles, shard, device)
        result = train(
            module,
            loss_fn,
            budget,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            precision=cfg.precision,
            threads=cfg.threads,
            checkpoint=phase_checkpoint(checkpoint, method, cfg),
            fingerprint=cfg.fingerprint() | {"phase": method},
            checkpoint_every_s=checkpoint_every_s,
            checkpoint_every_steps=checkpoint_every_steps,
            desc=f"pretrain ({method})",
            progress=progress,
            log=log,
        )
        rate = (result.steps - result.resumed_from) / max(result.seconds, 1e-9)
        log(
            f"pretrain ({method}): {result.steps} steps in {result.seconds:.0f} s of training "
            f"(about {rate:.2f} steps/s here), final loss {result.final_loss:.4f}"
        )
        results.append((method, result))
    model = model.cpu().eval()
    model.head.requires_grad_(True)
    metrics = card_metrics(cfg, results)
    thresholds = None
    if cfg.head == "trained":
        thresholds, calibration = calibrate(model, cfg, results[-1][1].precision)
        metrics |= calibration
        log(
            f"pretrain: head calibrated on site {cfg.calibration_domain}: macro-F1 "
            f"{calibration['calibration.macro_f1']:.3f}"
        )
    else:
        fresh_head(model, cfg.seed + 1)
    # data generation, training and calibration: what "fits in N minutes" is about
    metrics["pretrain.wall_seconds"] = round(time.perf_counter() - started, 3)
    if shard.main:
        write_artifact(
            model,
            out,
            name=name or f"spoke-foundation-{cfg.method.replace('+', '-')}",
            version=version,
            labels=LABELS,
            thresholds=thresholds,
            metrics=metrics,
        )
        for method, _ in cfg.phases():
            path = phase_checkpoint(checkpoint, method, cfg)
            if path is not None:
                path.unlink(missing_ok=True)
        log(f"pretrain: wrote {out}")
    distributed.barrier()
    return load_artifact(out)
