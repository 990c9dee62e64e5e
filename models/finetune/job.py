"""One fine-tuning job, end to end: samples in, a comparison and maybe a candidate artifact out.

1. load the parent artifact and the samples (a corrupt image is skipped and reported);
2. stratified held-out split; score the parent on it;
3. train with the chosen method under a step/epoch and time budget, checkpointed (the loop of
   ``models.training.loop``: atomic checkpoints, resumes where a killed run stopped);
4. score the candidate on the same split and apply the gate;
5. if it passes, write the candidate artifact (parent recorded, metrics on the card) and the
   trained weights (head or adapters) a reviewer at the hub may see. Never an image.

``report`` receives progress dicts as the job goes: what the daemon streams.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from appliance.errors import DataError
from models.artifact import Artifact, load_artifact, write_artifact
from models.decide import decide_many
from models.finetune.augment import drone_augment
from models.finetune.gate import Comparison, collapse_reason, compare, label_changes
from models.finetune.methods import (
    DEFAULT_EPOCHS,
    LEARNING_RATES,
    default_method,
    grow_head,
    merge,
    prepare,
    trained_state,
)
from models.finetune.probe import (
    MAX_EPOCHS,
    WIDE_POOL,
    feature_views,
    fit_probe,
    install_head,
    pool_features,
)
from models.finetune.split import TooFewSamples, stratified_split
from models.images import ImageLimits, decode_image
from models.preprocess import Preprocessing
from models.training.batches import step_indices
from models.training.loop import Budget, train
from models.training.metrics import Scores, score
from models.vit import VisionTransformer

Report = Callable[[dict[str, Any]], None]
#: Samples are small tiles; anything bigger is refused before decoding.
SAMPLE_LIMITS = ImageLimits(32 * 1024 * 1024, 40_000_000)
#: The probe's augmented feature views: at most this many, within this share of the budget.
MAX_VIEWS = 16
PROBE_SHARE = 0.5
TRAINED_WEIGHTS = "trained.safetensors"


@dataclass(frozen=True)
class JobSpec:
    parent: str
    samples: tuple[tuple[str, tuple[str, ...]], ...]
    labels: tuple[str, ...]
    out: str
    name: str
    version: str
    method: str = "auto"
    epochs: int | None = None
    budget_s: float | None = None
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None
    val_fraction: float = 0.25
    margin: float = 0.01
    max_label_drop: float = 0.05
    threads: int = 1
    device: str = "cpu"
    gpu_memory_fraction: float = 0.5
    checkpoint: str | None = None
    checkpoint_every_s: float = 15.0
    checkpoint_every_steps: int | None = None
    lora_rank: int = 4
    partial_blocks: int = 2
    #: Write the candidate even when the gate refuses it (benchmarks, notebooks).
    always_export: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["samples"] = [[p, list(labs)] for p, labs in self.samples]
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"unknown job fields: {', '.join(sorted(unknown))}")
        data = dict(data)
        data["samples"] = tuple((str(p), tuple(labs)) for p, labs in data["samples"])
        data["labels"] = tuple(data["labels"])
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (not the speed settings)."""
        data = self.to_dict()
        for k in ("threads", "checkpoint", "checkpoint_every_s", "checkpoint_every_steps",
                  "budget_s", "gpu_memory_fraction"):
            data.pop(k)
        return data


@dataclass
class Samples:
    images: np.ndarray  # (N, S, S, 3) uint8
    targets: np.ndarray  # (N, L) float32
    skipped: list[dict[str, str]] = field(default_factory=list)


def load_samples(spec: JobSpec, size: int) -> Samples:
    """Decode and resize every sample to ``size``; corrupt or missing ones are skipped, with the
    decoder's reason, so one bad file never sinks a job."""
    images, targets, skipped = [], [], []
    index = {name: i for i, name in enumerate(spec.labels)}
    for path, labels in spec.samples:
        try:
            data = Path(path).read_bytes()
            pixels = decode_image(data, SAMPLE_LIMITS).pixels
        except (OSError, DataError) as exc:
            skipped.append({"path": path, "reason": str(exc)})
            continue
        from PIL import Image

        tile = Image.fromarray(pixels)
        if tile.size != (size, size):
            tile = tile.resize((size, size), Image.Resampling.BILINEAR)
        images.append(np.asarray(tile, dtype=np.uint8))
        row = np.zeros(len(spec.labels), dtype=np.float32)
        for name in labels:
            if name not in index:
                raise DataError(f"sample {path}: label {name!r} is not in the job's label set")
            row[index[name]] = 1.0
        targets.append(row)
    if not images:
        raise TooFewSamples(f"no readable samples ({len(skipped)} skipped as unreadable)")
    return Samples(np.stack(images), np.stack(targets), skipped)


@torch.inference_mode()
def predict(model: VisionTransformer, images: np.ndarray, pre: Preprocessing, device: str,
            batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(pre.normalize(images[i : i + batch])).to(device)
        out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out).numpy()


def evaluate(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
             thresholds: dict[str, float], present: np.ndarray) -> tuple[Scores, np.ndarray]:
    """Scores of the labels a model reports (``models.decide``: each label's own threshold,
    background only where no defect is), over the labels the held-out split contains; and
    the reported (N, L) decisions."""
    decisions = decide_many(probs, labels, thresholds)
    names = [labels[j] for j in present]
    scores = score(decisions[:, present].astype(np.float32), targets[:, present], names)
    return scores, decisions


def next_steps(spec: JobSpec, method: str, n_train: int) -> int:
    """Steps for the given (or the method's default) epochs; a time budget only caps them."""
    per_epoch = max(1, math.ceil(n_train / spec.batch_size))
    epochs = spec.epochs if spec.epochs is not None else DEFAULT_EPOCHS[method]
    return epochs * per_epoch


@dataclass(frozen=True)
class Trained:
    steps: int
    seconds: float
    final_loss: float
    resumed_from: int
    details: dict[str, Any] = field(default_factory=dict)


def _probe(model: VisionTransformer, images: np.ndarray, targets: np.ndarray,
           pre: Preprocessing, spec: JobSpec, device: str, started: float, report: Report,
           thresholds: dict[str, float]) -> Trained:
    """The calibrated linear probe (``models.finetune.probe``): feature views for up to
    ``PROBE_SHARE`` of the time budget, then the pool whose cross-validated loss is lowest."""
    t0 = time.monotonic()
    deadline = None if spec.budget_s is None else started + PROBE_SHARE * spec.budget_s
    views = feature_views(
        model, images, pre, device, spec.seed, MAX_VIEWS, deadline,
        lambda v, n: report({"phase": "features", "view": v, "views": n,
                             "elapsed_s": round(time.monotonic() - started, 1)}))
    report({"phase": "train", "step": 0, "steps": len(views), "views": len(views)})
    max_epochs = spec.epochs if spec.epochs is not None else MAX_EPOCHS
    fits = {pool: fit_probe(pool_features(views, pool), targets, spec.seed, max_epochs)
            for pool in dict.fromkeys((model.cfg.global_pool, WIDE_POOL))}
    pool = min(fits, key=lambda k: fits[k].cv_loss)
    fit = fits[pool]
    install_head(model, fit, pool)
    prepare(model, "linear")
    for j in fit.fitted:
        thresholds[spec.labels[j]] = round(float(fit.thresholds[j]), 6)
    report({"phase": "train", "step": fit.epochs, "steps": fit.epochs,
            "loss": round(fit.cv_loss, 5), "elapsed_s": round(time.monotonic() - started, 1)})
    return Trained(fit.epochs, time.monotonic() - t0, fit.cv_loss, 0, {
        "views": len(views), "pool": pool, "weight_decay": fit.weight_decay,
        "epochs": fit.epochs, "cv_loss": {k: round(f.cv_loss, 5) for k, f in fits.items()},
        "cv_f1": round(fit.cv_f1, 5),
        "fitted": [spec.labels[j] for j in fit.fitted]})


def _train_weights(model: VisionTransformer, method: str, images: np.ndarray,
                   targets: np.ndarray, pre: Preprocessing, spec: JobSpec, device: str,
                   started: float, report: Report, log: Callable[[str], None]) -> Trained:
    """LoRA, the last blocks, or everything: AdamW on augmented batches, checkpointed."""
    y_all = torch.from_numpy(targets)
    prepare(model, method, seed=spec.seed, rank=spec.lora_rank, blocks=spec.partial_blocks)
    model.to(device)
    batch = min(spec.batch_size, len(images))
    steps = next_steps(spec, method, len(images))
    last = {"t": 0.0}

    def loss_fn(step: int) -> Tensor:
        idx = step_indices(len(images), batch, spec.seed, step)
        views = drone_augment(images[idx], np.random.default_rng([spec.seed, step, 1]))
        x = torch.from_numpy(pre.normalize(views)).to(device)
        loss = F.binary_cross_entropy_with_logits(model(x).float(), y_all[idx].to(device))
        now = time.monotonic()
        if now - last["t"] >= 0.5 or step + 1 >= steps:
            last["t"] = now
            report({"phase": "train", "step": step + 1, "steps": steps,
                    "loss": round(float(loss.detach()), 5),
                    "elapsed_s": round(now - started, 1)})
        return loss

    result = train(
        model, loss_fn, Budget(steps=steps, seconds=spec.budget_s),
        lr=spec.lr or LEARNING_RATES[method], weight_decay=0.01, precision="fp32",
        threads=spec.threads, checkpoint=Path(spec.checkpoint) if spec.checkpoint else None,
        fingerprint=spec.fingerprint() | {"method": method},
        checkpoint_every_s=spec.checkpoint_every_s,
        checkpoint_every_steps=spec.checkpoint_every_steps,
        desc=f"fine-tune ({method})", progress=False, log=log)
    return Trained(result.steps, result.seconds, result.final_loss, result.resumed_from)


def run_job(spec: JobSpec, report: Report = lambda _: None,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    started = time.monotonic()
    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_per_process_memory_fraction(spec.gpu_memory_fraction)
    torch.set_num_threads(spec.threads)
    parent: Artifact = load_artifact(Path(spec.parent))
    card = parent.card
    if tuple(spec.labels[: len(card.labels)]) != card.labels:
        raise DataError("the job's labels must extend the parent model's labels")
    pre = card.preprocessing
    report({"phase": "loading", "samples": len(spec.samples)})
    data = load_samples(spec, pre.input_size)
    train_idx, val_idx = stratified_split(data.targets, spec.labels, spec.val_fraction, spec.seed)
    method = spec.method if spec.method != "auto" else default_method(
        len(train_idx), device.startswith("cuda"))
    present = np.nonzero(data.targets[val_idx].sum(axis=0) > 0)[0]
    thresholds = dict(card.thresholds) | {n: 0.5 for n in spec.labels if n not in card.thresholds}
    model = parent.build_model().to(device)
    val_images, val_targets = data.images[val_idx], data.targets[val_idx]
    report({"phase": "baseline", "held_out": len(val_idx), "method": method})
    base = predict(model, val_images, pre, device)
    base = np.concatenate(
        [base, np.zeros((len(base), len(spec.labels) - base.shape[1]), np.float32)], axis=1)
    current, base_decisions = evaluate(base, val_targets, spec.labels, thresholds, present)

    grow_head(model, len(spec.labels) - len(card.labels), spec.seed)
    model.to(device)
    train_images, train_targets = data.images[train_idx], data.targets[train_idx]
    if method == "linear":
        result = _probe(model, train_images, train_targets, pre, spec, device, started, report,
                        thresholds)
    else:
        result = _train_weights(model, method, train_images, train_targets, pre, spec, device,
                                started, report, log)
    trained = trained_state(model)
    merge(model)
    model.eval()
    report({"phase": "evaluating"})
    cand, decisions = evaluate(predict(model, val_images, pre, device), val_targets,
                               spec.labels, thresholds, present)
    comparison: Comparison = compare(current, cand, spec.margin, spec.max_label_drop,
                                     collapse=collapse_reason(decisions, val_targets,
                                                              spec.labels),
                                     changes=label_changes(
                                         base_decisions[:, present], decisions[:, present],
                                         val_targets[:, present],
                                         [spec.labels[j] for j in present]))
    out: dict[str, Any] = {
        "method": method,
        "samples": len(data.images),
        "train": len(train_idx),
        "held_out": len(val_idx),
        "skipped": data.skipped,
        "labels": list(spec.labels),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 2),
        "final_loss": round(result.final_loss, 5),
        "details": result.details,
        "comparison": comparison.to_dict(),
        "candidate": None,
        "trained_weights": None,
        "version": spec.version,
        "parent": card.ref,
        "device": device,
        "threads": spec.threads,
    }
    if comparison.promote or spec.always_export:
        report({"phase": "exporting"})
        out_dir = Path(spec.out)
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        write_artifact(
            model.cpu(), out_dir, name=spec.name, version=spec.version, labels=spec.labels,
            thresholds=thresholds, preprocessing=pre, parent=card.ref,
            metrics={
                "finetune.macro_f1": round(cand.macro_f1, 6),
                "finetune.parent_macro_f1": round(current.macro_f1, 6),
                "finetune.exact_match": round(cand.exact_match, 6),
                "finetune.samples": float(len(data.images)),
                "finetune.held_out": float(len(val_idx)),
                "finetune.steps": float(result.steps),
                "finetune.lora": float(method == "lora"),
                "finetune.linear": float(method == "linear"),
            })
        from safetensors.torch import save_file

        weights = out_dir.parent / TRAINED_WEIGHTS
        save_file({k: v.cpu() for k, v in trained.items()}, str(weights),
                  metadata={"method": method, "parent": card.ref, "version": spec.version})
        out["candidate"] = str(out_dir)
        out["trained_weights"] = str(weights)
    if spec.checkpoint:
        Path(spec.checkpoint).unlink(missing_ok=True)
    out["seconds"] = round(time.monotonic() - started, 2)
    return out
