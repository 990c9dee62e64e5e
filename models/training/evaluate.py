"""How much does pre-training buy on a site the model has never seen?

Three starting points (self-supervised MAE, supervised, random init) get the same
fine-tuning budget on a held-out domain with 10, 30, 100 and 300 labeled tiles per class,
two ways: a linear probe on frozen features and a full fine-tune. Scores are on a separate
test set of that domain.
"""

import copy
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from appliance.errors import DataError
from models.artifact import load_artifact
from models.data import LABELS, tile_arrays
from models.preprocess import Preprocessing
from models.training.batches import TileSet, supervised_loss
from models.training.loop import Budget, autocast, choose_settings, train
from models.training.metrics import Scores, score
from models.training.pretrain import PretrainConfig, fresh_head, pretrain
from models.vit import VisionTransformer, build_model

STARTS = ("ssl", "supervised", "scratch")
START_NAMES = {
    "ssl": "pre-trained (MAE)",
    "supervised": "pre-trained (supervised)",
    "scratch": "from scratch",
}


@dataclass(frozen=True)
class EvalConfig:
    pretrain: PretrainConfig  # its method is ignored: both methods run with its budget
    target_domain: int = 1000
    pool_size: int = 2500
    test_size: int = 600
    shots: tuple[int, ...] = (10, 30, 100, 300)
    finetune_steps: int = 150
    finetune_batch: int = 32
    finetune_lr: float = 5e-4
    probe_steps: int = 300
    probe_lr: float = 1e-2
    starts: tuple[str, ...] = STARTS

    def __post_init__(self) -> None:
        unknown = set(self.starts) - set(STARTS)
        if unknown or not self.starts:
            raise DataError(f"starting points: choose from {', '.join(STARTS)}")


@dataclass(frozen=True)
class Row:
    start: str
    method: str
    shots: int
    train_images: int
    scores: Scores
    seconds: float


def select_shots(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of a labeled subset with at least ``k`` positives per label where the pool has
    them: walk a shuffled pool and keep a tile if it helps a label still short of ``k``."""
    order = np.random.default_rng([seed, k]).permutation(len(targets))
    counts = np.zeros(targets.shape[1], dtype=np.int64)
    chosen = []
    for i in order:
        row = targets[i] >= 0.5
        if (counts[row] < k).any():
            chosen.append(i)
            counts += row
            if (counts >= k).all():
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))


@torch.inference_mode()
def features(
    model: VisionTransformer, tiles: TileSet, pre: Preprocessing, precision: str, batch: int = 128
) -> Tensor:
    """Pooled pre-logit embeddings (the class token), what a linear probe sees."""
    model.eval()
    out = []
    for i in range(0, len(tiles), batch):
        x = torch.from_numpy(pre.normalize(tiles.images[i : i + batch]))
        with autocast(precision):
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    return torch.cat(out)


@torch.inference_mode()
def predict(
    model: VisionTransformer, tiles: TileSet, pre: Preprocessing, precision: str, batch: int = 128
) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(tiles), batch):
        x = torch.from_numpy(pre.normalize(tiles.images[i : i + batch]))
        with autocast(precision):
            out.append(torch.sigmoid(model(x).float()))
    return torch.cat(out).numpy()


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, steps: int, lr: float, seed: int
) -> np.ndarray:
    """Logistic regression on standardised frozen features, full batch; test probabilities."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(xs.shape[1], train_y.shape[1], generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(train_y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(xs @ w + b, train_y).backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(xt @ w + b).numpy()


def fine_tune(
    model: VisionTransformer, tiles: TileSet, cfg: EvalConfig, precision: str, seed: int
) -> VisionTransformer:
    """Full fine-tune of a copy of ``model`` (fresh head) for a fixed number of steps."""
    model = copy.deepcopy(model)
    fresh_head(model, seed)
    pre = Preprocessing(model.cfg.img_size)
    loss = supervised_loss(model, tiles, pre, min(cfg.finetune_batch, len(tiles)), seed)
    train(
        model,
        loss,
        Budget(steps=cfg.finetune_steps),
        lr=cfg.finetune_lr,
        weight_decay=0.05,
        precision=precision,
        threads=torch.get_num_threads(),
        progress=False,
        log=lambda _: None,
        desc="fine-tune",
    )
    return model


def starting_points(
    cfg: EvalConfig, work: Path, reuse: dict[str, Path], log: Callable[[str], None]
) -> dict[str, VisionTransformer]:
    """The MAE and supervised encoders (pre-trained now into ``work`` unless given) and a
    randomly initialised one with the same seed (always: it also times the fine-tune settings)."""
    models: dict[str, VisionTransformer] = {}
    for start, method in (("ssl", "mae"), ("supervised", "supervised")):
        if start not in cfg.starts:
            continue
        path = reuse.get(start) or work / f"pretrained-{method}"
        if not path.exists():
            pcfg = dataclasses.replace(cfg.pretrain, method=method)
            pretrain(pcfg, path, checkpoint=work / f"pretrained-{method}.ckpt", log=log)
        models[start] = load_artifact(path).build_model()
    models["scratch"] = build_model(cfg.pretrain.vit, seed=cfg.pretrain.seed)
    return models


def evaluate(
    cfg: EvalConfig,
    work: Path,
    reuse: dict[str, Path] | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    models = starting_points(cfg, work, reuse or {}, log)
    size = cfg.pretrain.vit.img_size
    pre = Preprocessing(size)
    log(
        f"evaluate: generating {cfg.pool_size} + {cfg.test_size} tiles of held-out domain "
        f"{cfg.target_domain}"
    )
    images, targets = tile_arrays(
        [cfg.target_domain], cfg.pool_size + cfg.test_size, size, progress=True
    )
    pool = TileSet(images[: cfg.pool_size], targets[: cfg.pool_size])
    test = TileSet(images[cfg.pool_size :], targets[cfg.pool_size :])
    seed = cfg.pretrain.seed
    scratch = models["scratch"]
    settings = choose_settings(
        scratch,
        supervised_loss(scratch, pool, pre, cfg.finetune_batch, seed),
        cfg.pretrain.precision,
        cfg.pretrain.threads,
    )
    log(f"evaluate: fine-tuning in {settings.describe()}")
    rows: list[Row] = []
    for start in cfg.starts:
        model = models[start]
        pool_f = features(model, pool, pre, settings.precision)
        test_f = features(model, test, pre, settings.precision)
        for k in cfg.shots:
            idx = select_shots(pool.targets, k, seed)
            subset = pool.subset(idx)
            t0 = time.perf_counter()
            probs = linear_probe(
                pool_f[idx],
                torch.from_numpy(subset.targets),
                test_f,
                cfg.probe_steps,
                cfg.probe_lr,
                seed,
            )
            rows.append(
                Row(
                    start,
                    "linear probe",
                    k,
                    len(idx),
                    score(probs, test.targets, LABELS),
                    time.perf_counter() - t0,
                )
            )
            t0 = time.perf_counter()
            tuned = fine_tune(model, subset, cfg, settings.precision, seed + k)
            probs = predict(tuned, test, pre, settings.precision)
            rows.append(
                Row(
                    start,
                    "fine-tune",
                    k,
                    len(idx),
                    score(probs, test.targets, LABELS),
                    time.perf_counter() - t0,
                )
            )
            for r in rows[-2:]:
                log(
                    f"evaluate: {START_NAMES[start]:<24} {r.method:<12} {k:>3}/class "
                    f"({r.train_images} images): macro-F1 {r.scores.macro_f1:.3f}, "
                    f"exact match {r.scores.exact_match:.3f} ({r.seconds:.0f} s)"
                )
    return rows


def report(cfg: EvalConfig, rows: Sequence[Row], command: str, seconds: float) -> str:
    """The Markdown report for docs/FOUNDATION-MODEL.md."""
    p = cfg.pretrain
    vit = p.vit
    head = [
        "starting point",
        "method",
        "labels/class",
        "images",
        "macro-F1",
        "exact match",
        *LABELS,
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            START_NAMES[r.start],
            r.method,
            str(r.shots),
            str(r.train_images),
            f"{r.scores.macro_f1:.3f}",
            f"{r.scores.exact_match:.3f}",
            *(f"{r.scores.per_label_f1[n]:.2f}" for n in LABELS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    budget = f"{p.steps} steps" if p.steps is not None else f"{p.seconds:.0f} s"
    setup = [
        f"- Model: `{p.preset}` at {vit.img_size} px (dim {vit.embed_dim}, depth {vit.depth}, "
        f"patch {vit.patch_size}), chosen to fit a 2-core CPU.",
        f"- Pre-training: {budget} each for MAE (mask ratio {p.mask_ratio}, target blur "
        f"{p.target_blur}) and supervised, "
        f"batch {p.batch_size}, peak lr {p.lr}, on generated domains "
        f"{', '.join(map(str, p.domains))} ({p.tiles_per_domain} tiles each).",
        f"- Held-out domain {cfg.target_domain}: a pool of {cfg.pool_size} tiles to label from "
        f"and {cfg.test_size} test tiles.",
        f"- Fine-tune: {cfg.finetune_steps} steps of batch {cfg.finetune_batch}, lr "
        f"{cfg.finetune_lr}, fresh head, flips and rotations. Linear probe: logistic "
        f"regression on the frozen class token, {cfg.probe_steps} full-batch Adam steps.",
        "- Threshold 0.5 for every label. Exact match: the whole label set right.",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores shared with other work; "
        f"torch {torch.__version__}; whole run {seconds / 60:.0f} min.",
    ]
    return "\n".join(["```", command, "```", "", *setup, "", *lines, ""])


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "start": r.start,
            "method": r.method,
            "shots": r.shots,
            "train_images": r.train_images,
            "macro_f1": r.scores.macro_f1,
            "exact_match": r.scores.exact_match,
            "per_label_f1": r.scores.per_label_f1,
            "seconds": r.seconds,
        }
        for r in rows
    ]
