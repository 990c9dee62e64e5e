"""Pre-training a foundation model at the hub on generated imagery from several sites.

Two methods share one loop and one data pipeline:

- ``mae``: masked autoencoding on the images alone (labels are never read), the
  self-supervised route that scales to unlabeled drone footage;
- ``supervised``: multi-label BCE on the generated labels, the baseline MAE must beat.

The output is a model artifact: the encoder, a freshly initialised head, and a card whose
metrics record the training run and the data-generation seeds needed to repeat it.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from appliance.errors import DataError
from models.artifact import Artifact, write_artifact
from models.config import PRESETS, ViTConfig, preset, tiny_config
from models.data import LABELS, tile_arrays
from models.data.dataset import GENERATOR_VERSION
from models.preprocess import Preprocessing
from models.training.batches import TileSet, make_batch, supervised_loss
from models.training.loop import Budget, LoopResult, train
from models.training.mae import MaskedAutoencoder
from models.vit import VisionTransformer, build_model

METHODS = ("mae", "supervised")
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
    seed: int = 0
    precision: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not self.domains or self.tiles_per_domain < 1 or self.batch_size < 1:
            raise DataError("pre-training needs domains, tiles per domain and a batch size")
        if not 0.0 < self.mask_ratio < 1.0:
            raise DataError("the mask ratio must be between 0 and 1")

    @property
    def budget(self) -> Budget:
        return Budget(self.steps, self.seconds)

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
    cfg: PretrainConfig, model: VisionTransformer, tiles: TileSet
) -> tuple[torch.nn.Module, Callable[[int], Tensor]]:
    """The module to optimise and its loss at each step."""
    pre = Preprocessing(cfg.vit.img_size)
    if cfg.method == "mae":
        with torch.random.fork_rng(devices=[]):  # the decoder's init is part of the seed
            torch.manual_seed(cfg.seed + 2)
            mae = MaskedAutoencoder(model, mask_ratio=cfg.mask_ratio, target_blur=cfg.target_blur)

        def mae_loss(step: int) -> Tensor:
            x, _ = make_batch(tiles, pre, cfg.batch_size, cfg.seed, step)
            return mae(x, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))

        return mae, mae_loss

    return model, supervised_loss(model, tiles, pre, cfg.batch_size, cfg.seed)


def fresh_head(model: VisionTransformer, seed: int) -> None:
    """Replace the head by a newly initialised one, as every fine-tune should start from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.trunc_normal_(model.head.weight, std=0.02)
    torch.nn.init.zeros_(model.head.bias)


def card_metrics(cfg: PretrainConfig, result: LoopResult) -> dict[str, float]:
    """Training metadata for the card (its metrics hold numbers only, so the method is 0/1)."""
    out = {
        "pretrain.supervised": float(cfg.method == "supervised"),
        "pretrain.steps": float(result.steps),
        "pretrain.seconds": round(result.seconds, 1),
        "pretrain.final_loss": round(result.final_loss, 5),
        "pretrain.bf16": float(result.precision == "bf16"),
        "pretrain.seed": float(cfg.seed),
        "pretrain.batch_size": float(cfg.batch_size),
        "pretrain.lr": cfg.lr,
        "pretrain.mask_ratio": cfg.mask_ratio if cfg.method == "mae" else 0.0,
        "pretrain.target_blur": float(cfg.target_blur) if cfg.method == "mae" else 0.0,
        "data.generator_version": float(GENERATOR_VERSION),
        "data.tiles_per_domain": float(cfg.tiles_per_domain),
    }
    out |= {f"data.domain.{i}": float(d) for i, d in enumerate(cfg.domains)}
    return out


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
    vit = cfg.vit
    log(
        f"pretrain: {cfg.method} on {len(cfg.domains)} domains x {cfg.tiles_per_domain} "
        f"generated {vit.img_size}px tiles, ViT dim {vit.embed_dim} depth {vit.depth}"
    )
    tiles = load_tiles(cfg, progress)
    model = build_model(vit, seed=cfg.seed)
    module, loss_fn = make_task(cfg, model, tiles)
    result = train(
        module,
        loss_fn,
        cfg.budget,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        precision=cfg.precision,
        threads=cfg.threads,
        checkpoint=checkpoint,
        fingerprint=cfg.fingerprint(),
        checkpoint_every_s=checkpoint_every_s,
        checkpoint_every_steps=checkpoint_every_steps,
        desc=f"pretrain ({cfg.method})",
        progress=progress,
        log=log,
    )
    rate = (result.steps - result.resumed_from) / max(result.seconds, 1e-9)
    log(
        f"pretrain: {result.steps} steps in {result.seconds:.0f} s of training "
        f"(about {rate:.2f} steps/s here), final loss {result.final_loss:.4f}"
    )
    fresh_head(model, cfg.seed + 1)
    artifact = write_artifact(
        model.eval(),
        out,
        name=name or f"spoke-foundation-{cfg.method}",
        version=version,
        labels=LABELS,
        metrics=card_metrics(cfg, result),
    )
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    log(f"pretrain: wrote {out}")
    return artifact
