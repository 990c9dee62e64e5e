"""One fine-tuning job, end to end: samples in, a comparison and maybe a candidate artifact out.

1. ``prepare_job``: load the parent artifact and the samples (a corrupt image is skipped and
   reported), the stratified held-out split, the method; for a parent that decides per frame,
   the labeled whole frames are the held-out set instead (``models.finetune.heldout``); for
   the probe on samples, every sample is trained on and judged out of fold
   (``models.finetune.crossval``);
2. ``baseline``: score the parent on the held-out split, over the site's task (the labels
   its samples carry);
3. ``train_candidate``: train with the chosen method under a step/epoch and time budget,
   checkpointed (the loop of ``models.training.loop``: atomic checkpoints, resumes where a killed
   run stopped); for a parent that decides per frame, calibrate the thresholds on frames; the
   labels the site did not train stay quiet on its background samples (``models.finetune.quiet``);
4. ``judge``: score the candidate on the same split (or out of fold) and apply the gate;
5. ``export``: if it passes, write the candidate artifact (parent recorded, metrics on the card)
   and the trained weights (head or adapters) a reviewer at the hub may see. Never an image.

``run_job`` runs the five and returns an ``appliance.finetune.JobResult``. ``report``
receives progress dicts as the job goes: what the daemon streams.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from appliance.errors import DataError
from appliance.finetune import GateReport, JobResult, Skipped
from models.artifact import Artifact, load_artifact, write_artifact
from models.decide import BACKGROUND, PER_TILE, Decision, decide_many, image_probs
from models.finetune.adapt import BATCH as ADAPT_BATCH
from models.finetune.adapt import Adapted, adapt
from models.finetune.augment import drone_augment
from models.finetune.crossval import (
    OutOfFold,
    averaged_labels,
    head_probs,
    merged,
    out_of_fold,
    shifted,
)
from models.finetune.gate import Comparison, collapse_reason, compare, label_changes
from models.finetune.heldout import (
    HeldOut,
    frame_calibrated,
    is_frame,
    load_frames,
    needs_frames,
    split_frames,
    target_row,
)
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
    ProbeFit,
    feature_views,
    fit_probe,
    install_head,
    pool_features,
)
from models.finetune.quiet import Quieted, card_metrics, quiet, untrained
from models.finetune.served import Tiles, resized, sample_tiles
from models.finetune.spec import JobSpec, judged_out_of_fold
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
#: The probe's augmented feature views: at most this many, within this share of what is left
#: of the budget.
MAX_VIEWS = 16
PROBE_SHARE = 0.5
#: At most this many unlabeled images (``JobSpec.adapt_images``) join the adaptation pool, and
#: the adaptation makes at most this many passes over its pool (a small pool is done sooner).
MAX_ADAPT_IMAGES = 4000
MAX_ADAPT_EPOCHS = 50
TRAINED_WEIGHTS = "trained.safetensors"


@dataclass
class Samples:
    images: np.ndarray  # (N, S, S, 3) uint8, each sample resized to the model's input
    targets: np.ndarray  # (N, L) float32
    tiles: Tiles  # each sample as the pipeline serves it (``models.finetune.served``)
    skipped: list[Skipped] = field(default_factory=list)


def load_pixels(path: str) -> np.ndarray:
    """One image decoded within ``SAMPLE_LIMITS``; raises ``OSError`` or ``DataError`` for a
    missing or corrupt file."""
    return decode_image(Path(path).read_bytes(), SAMPLE_LIMITS).pixels


def load_tile(path: str, size: int) -> np.ndarray:
    """One image decoded and resized to ``size`` x ``size`` (see ``load_pixels``)."""
    return resized(load_pixels(path), size)


def load_samples(spec: JobSpec, pre: Preprocessing) -> Samples:
    """Decode every sample once, resized to the model's input and as the pipeline's tiles;
    corrupt or missing ones are skipped, with the decoder's reason, so one bad file never
    sinks a job."""
    images, targets, skipped, tiles = [], [], [], []
    for path, labels in spec.samples:
        try:
            pixels = load_pixels(path)
            images.append(resized(pixels, pre.input_size))
            tiles.append(sample_tiles(pixels, pre))
        except (OSError, DataError) as exc:
            skipped.append(Skipped(path=path, reason=str(exc)))
            continue
        targets.append(target_row(path, labels, spec.labels))
    if not images:
        raise TooFewSamples(f"no readable samples ({len(skipped)} skipped as unreadable)")
    return Samples(np.stack(images), np.stack(targets), Tiles.of(tiles), skipped)


def predict_served(model: VisionTransformer, tiles: Tiles, samples: int, pre: Preprocessing,
                   device: str, labels: Sequence[str], decision: Decision) -> np.ndarray:
    """(N, L): each sample's probabilities as the pipeline reports them (its tiles combined
    as ``decision`` says)."""
    return image_probs(predict(model, tiles.tiles, pre, device), tiles.owner, samples,
                       labels, decision)


@torch.inference_mode()
def predict(model: VisionTransformer, images: np.ndarray, pre: Preprocessing, device: str,
            batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(pre.normalize(images[i : i + batch])).to(device)
        out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out).numpy()


def task_labels(*targets: np.ndarray) -> np.ndarray:
    """Indices of the labels the site's samples carry: the site's task."""
    return np.flatnonzero((np.concatenate(targets) >= 0.5).any(axis=0))


def evaluate(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
             thresholds: dict[str, float], present: np.ndarray, task: np.ndarray
             ) -> tuple[Scores, np.ndarray]:
    """Scores of the labels a model reports for the site's ``task`` (``models.decide`` on
    those labels only: each its own threshold, background where none of them is), over the
    labels the held-out split contains; and the (N, L) decisions (other labels off). A
    parent's label the site never labeled has a threshold no site sample calibrated: on real
    photos the parent's crack, spallation and exposed bars fired on every photo, so background
    was never decided and both models scored about 0.33 (docs/FOUNDATION-MODEL.md)."""
    decisions = np.zeros(probs.shape, dtype=bool)
    decisions[:, task] = decide_many(probs[:, task], [labels[j] for j in task], thresholds)
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
    #: The probe's out-of-fold decisions when the gate judges every labeled sample.
    judged: OutOfFold | None = None


def _probe(model: VisionTransformer, tiles: Tiles, targets: np.ndarray,
           pre: Preprocessing, spec: JobSpec, device: str, started: float, report: Report,
           thresholds: dict[str, float], cross_validate: bool, decision: Decision
           ) -> tuple[Trained, Decision]:
    """The calibrated linear probe (``models.finetune.probe``) on the samples' served tiles:
    feature views for up to ``PROBE_SHARE`` of the time budget, then the pool whose
    cross-validated loss is lowest. With ``cross_validate``, the recipe is also re-fit per
    fold for the gate's out-of-fold judgement (``models.finetune.crossval``), and where
    samples span several tiles, each label is decided on its samples' maximum over tiles or
    on their mean, whichever decides the samples better out of fold
    (``crossval.averaged_labels``). Returns how it went and the candidate's decision
    (``decision``, the parent's, with its averaged labels chosen again)."""
    t0 = time.monotonic()
    deadline = None if spec.budget_s is None else (
        t0 + PROBE_SHARE * max(0.0, spec.budget_s - (t0 - started)))
    views = feature_views(
        model, tiles.tiles, pre, device, spec.seed, MAX_VIEWS, deadline,
        lambda v, n: report({"phase": "features", "view": v, "views": n,
                             "elapsed_s": round(time.monotonic() - started, 1)}))
    report({"phase": "train", "step": 0, "steps": len(views), "views": len(views)})
    max_epochs = spec.epochs if spec.epochs is not None else MAX_EPOCHS
    fits = {pool: fit_probe(pool_features(views, pool), targets, spec.seed, max_epochs,
                            tiles.owner)
            for pool in dict.fromkeys((model.cfg.global_pool, WIDE_POOL))}
    pool = min(fits, key=lambda k: fits[k].cv_loss)
    fit = fits[pool]
    judged = None
    averaged: tuple[int, ...] = ()

    def fit_recipe(views: Tensor, targets: np.ndarray, owner: np.ndarray, on_means: bool
                   ) -> ProbeFit:
        return fit_probe(pool_features(views, pool), targets, spec.seed, max_epochs,
                         owner, averaged=on_means)

    if cross_validate:
        report({"phase": "cross-validating", "samples": len(targets)})
        parent_probs = head_probs(model.head, model.cfg.global_pool, views[0], tiles.owner,
                                  len(targets), spec.labels[: model.head.out_features],
                                  decision)
        base = shifted(parent_probs, np.asarray(
            [thresholds[n] for n in spec.labels], dtype=np.float32))
        if len(tiles.tiles) > len(targets):
            mean_fit = fit_recipe(views, targets, tiles.owner, True)
            averaged = averaged_labels(views, targets, tiles.owner, base, spec.seed, fit_recipe,
                                       pool, (fit, mean_fit), spec.labels, decision)
            fit = merged(fit, mean_fit, averaged)
    # A label this probe fit is averaged only if it chose to; the others keep the parent's way.
    decision = replace(decision, mean=tuple(
        n for j, n in enumerate(spec.labels)
        if j in averaged or (n in decision.mean and j not in fit.fitted)))
    if cross_validate:
        # The folds re-fit everything but the pool and the averaged labels, chosen once on
        # all samples: half the cost of re-choosing them, for choices between two.
        def refit(views: Tensor, targets: np.ndarray, owner: np.ndarray
                  ) -> tuple[str, ProbeFit]:
            over_tiles = fit_recipe(views, targets, owner, False)
            if not averaged:
                return pool, over_tiles
            return pool, merged(over_tiles, fit_recipe(views, targets, owner, True), averaged)

        judged = out_of_fold(views, targets, tiles.owner, base, spec.seed, refit, (pool, fit),
                             spec.labels, decision)
    install_head(model, fit, pool)
    prepare(model, "linear")
    for j in fit.fitted:
        thresholds[spec.labels[j]] = round(float(fit.thresholds[j]), 6)
    report({"phase": "train", "step": fit.epochs, "steps": fit.epochs,
            "loss": round(fit.cv_loss, 5), "elapsed_s": round(time.monotonic() - started, 1)})
    details: dict[str, Any] = {
        "views": len(views), "tiles": len(tiles.tiles), "pool": pool,
        "weight_decay": fit.weight_decay,
        "epochs": fit.epochs, "cv_loss": {k: round(f.cv_loss, 5) for k, f in fits.items()},
        "cv_f1": round(fit.cv_f1, 5),
        "fitted": [spec.labels[j] for j in fit.fitted],
        "averaged": [spec.labels[j] for j in averaged]}
    if judged is not None:
        details["gate_folds"] = judged.folds
    return Trained(fit.epochs, time.monotonic() - t0, fit.cv_loss, 0, details, judged), decision


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


@dataclass
class Prepared:
    """What every step of a job shares: the parent, the decoded training samples, the gate's
    held-out decisions (samples, or frames for a parent that decides per frame, with the
    frames that calibrate the candidate's thresholds), the method, the thresholds (the probe
    or the frames calibrate them) and the model being tuned."""

    spec: JobSpec
    device: str
    parent: Artifact
    data: Samples
    train_idx: np.ndarray
    held_out: HeldOut
    calibration: HeldOut | None
    method: str
    present: np.ndarray
    task: np.ndarray
    thresholds: dict[str, float]
    model: VisionTransformer
    #: How the model being tuned combines a sample's tiles: the parent's until the probe
    #: chooses the candidate's (``_probe``).
    decision: Decision = PER_TILE
    #: The probe on tile samples without site adaptation: it trains on every sample and the
    #: gate judges each one out of fold (``held_out`` is then every sample).
    cross_validated: bool = False

    def served(self, decisions: HeldOut) -> np.ndarray:
        """(N, L): ``model``'s probabilities for ``decisions``, as the pipeline serves them."""
        labels = self.spec.labels[: self.model.head.out_features]
        return predict_served(self.model, decisions.tiles, len(decisions),
                              self.parent.card.preprocessing, self.device, labels,
                              self.decision)


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on the held-out split and its (N, L) decisions there."""

    scores: Scores
    decisions: np.ndarray


def prepare_job(spec: JobSpec, report: Report) -> Prepared:
    """Load the parent and the samples, split them, and choose the method."""
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
    report({"phase": "loading", "samples": len(spec.samples)})
    pre, decision = card.preprocessing, card.decision
    calibration: HeldOut | None = None
    if decision.unit == "frame":
        frames = tuple(s for s in spec.samples if is_frame(s[0], pre, decision))
        if not frames:
            raise needs_frames(decision)
        data = load_samples(replace(spec, samples=tuple(
            s for s in spec.samples if s not in frames)), pre)
        labeled, skipped = load_frames(frames, spec.labels, pre, decision, load_pixels)
        data.skipped.extend(skipped)
        calibration, held_out = split_frames(labeled, spec.labels, spec.seed)
        train_idx = np.arange(len(data.images))
    else:
        data = load_samples(spec, pre)
        train_idx, val_idx = stratified_split(data.targets, spec.labels, spec.val_fraction,
                                              spec.seed)
        held_out = HeldOut(data.tiles.select(val_idx), data.targets[val_idx])
    method = spec.method if spec.method != "auto" else default_method(
        len(train_idx), device.startswith("cuda"))
    cross_validated = judged_out_of_fold(method, calibration is not None, spec.adapt_steps)
    if cross_validated:
        train_idx = np.arange(len(data.images))
        held_out = HeldOut(data.tiles, data.targets)
    present = np.nonzero(held_out.targets.sum(axis=0) > 0)[0]
    task = task_labels(data.targets, held_out.targets,
                       *([] if calibration is None else [calibration.targets]))
    thresholds = dict(card.thresholds) | {n: 0.5 for n in spec.labels if n not in card.thresholds}
    model = parent.build_model().to(device)
    return Prepared(spec, device, parent, data, train_idx, held_out, calibration, method,
                    present, task, thresholds, model, decision, cross_validated)


def baseline(job: Prepared, report: Report) -> Evaluation:
    """The parent on the held-out split, as served (a label it does not know yet scores as
    absent)."""
    spec = job.spec
    report({"phase": "baseline", "held_out": len(job.held_out), "method": job.method})
    base = job.served(job.held_out)
    base = np.concatenate(
        [base, np.zeros((len(base), len(spec.labels) - base.shape[1]), np.float32)], axis=1)
    scores, decisions = evaluate(base, job.held_out.targets, spec.labels, job.thresholds,
                                 job.present, job.task)
    return Evaluation(scores, decisions)


def adapt_checkpoint(spec: JobSpec) -> Path | None:
    return Path(spec.checkpoint + ".adapt") if spec.checkpoint else None


def site_adaptation(job: Prepared, report: Report, log: Callable[[str], None]
                    ) -> Adapted | None:
    """MAE on the training samples' images and the site's unlabeled imagery
    (``models.finetune.adapt``), within ``adapt_max_s`` and ``adapt_share`` of the budget;
    an unreadable unlabeled image is left out. None when it has no steps to make."""
    spec = job.spec
    steps = spec.adapt_steps
    if steps <= 0:
        return None
    size = job.parent.card.preprocessing.input_size
    pool = [job.data.images[job.train_idx]]
    for path in spec.adapt_images[:MAX_ADAPT_IMAGES]:
        try:
            pool.append(load_tile(path, size)[None])
        except (OSError, DataError):
            continue
    seconds = spec.adapt_max_s if spec.budget_s is None else min(
        spec.adapt_max_s, spec.adapt_share * spec.budget_s)
    images = np.concatenate(pool)
    steps = min(steps, math.ceil(MAX_ADAPT_EPOCHS * len(images) / ADAPT_BATCH))
    return adapt(job.model, images, job.parent.card.preprocessing,
                 seed=spec.seed, steps=steps, seconds=seconds, threads=spec.threads,
                 checkpoint=adapt_checkpoint(spec), fingerprint=spec.fingerprint(),
                 report=report, log=log)


def train_candidate(job: Prepared, started: float, report: Report,
                    log: Callable[[str], None]) -> tuple[Trained, dict[str, Tensor]]:
    """Adapt the encoder to the site, grow the head for new labels, train with the job's
    method, merge adapters into the weights, and set the thresholds (frames, background);
    returns how it went and the trained tensors a reviewer may see."""
    spec, model = job.spec, job.model
    pre = job.parent.card.preprocessing
    adapted = site_adaptation(job, report, log)
    grow_head(model, len(spec.labels) - len(job.parent.card.labels), spec.seed)
    model.to(job.device)
    images, targets = job.data.images[job.train_idx], job.data.targets[job.train_idx]
    if job.method == "linear":
        result, job.decision = _probe(model, job.data.tiles.select(job.train_idx), targets, pre,
                                      spec, job.device, started, report, job.thresholds,
                                      job.cross_validated, job.decision)
    else:
        result = _train_weights(model, job.method, images, targets, pre, spec, job.device,
                                started, report, log)
    if adapted is not None:
        result.details["adapt"] = adapted.to_dict()
    trained = trained_state(model, everything=adapted is not None)
    merge(model)
    model.eval()
    if job.calibration is not None:
        calibrate_for_frames(job, job.calibration, result, report)
    quieted = quiet_background(job, report)
    if quieted is not None:
        result.details["background_rule"] = quieted.to_dict()
    return result, trained


def background_samples(job: Prepared) -> HeldOut:
    """The site's background samples, decided as the candidate's thresholds decide: the
    calibration frames for a parent that decides per frame, else the training samples."""
    source = job.calibration if job.calibration is not None else HeldOut(
        job.data.tiles.select(job.train_idx), job.data.targets[job.train_idx])
    labels = job.spec.labels
    if BACKGROUND not in labels:
        return source.select(np.zeros(0, dtype=np.int64))
    return source.select(np.flatnonzero(source.targets[:, labels.index(BACKGROUND)] >= 0.5))


def quiet_background(job: Prepared, report: Report) -> Quieted | None:
    """The labels the site did not train (parent's rows) raised over the candidate's
    probabilities on the site's background samples (``models.finetune.quiet``); None when
    the site trained every label, and nothing raised when it has no background sample."""
    labels = job.spec.labels
    names = untrained(labels, {labels[j] for j in job.task})
    if not names:
        return None
    background = background_samples(job)
    if not len(background):
        return Quieted(0)
    report({"phase": "quieting", "background": len(background)})
    return quiet(job.served(background), labels, names, job.thresholds)


def calibrate_for_frames(job: Prepared, frames: HeldOut, result: Trained, report: Report
                         ) -> None:
    """The candidate's thresholds for the parent's per-frame decision, on the calibration
    ``frames`` (never the gate's); a label they cannot calibrate keeps the parent's
    threshold."""
    report({"phase": "calibrating", "frames": len(frames)})
    card = job.parent.card
    parent = dict(card.thresholds) | {n: 0.5 for n in job.spec.labels if n not in card.thresholds}
    thresholds, done = frame_calibrated(job.served(frames), frames.targets, job.spec.labels,
                                        parent)
    job.thresholds.update(thresholds)
    result.details["frames"] = {"calibration": len(frames), "held_out": len(job.held_out),
                                "calibrated": done}


def judge(job: Prepared, parent: Evaluation, report: Report, judged: OutOfFold | None = None
          ) -> tuple[Evaluation, Comparison]:
    """The candidate on the same split, as served (or its recipe's out-of-fold decisions,
    ``judged``), and the gate's verdict against the parent. A collapse is one answer for
    every judged sample, or for every sample the final candidate was fit on."""
    spec = job.spec
    val_targets = job.held_out.targets
    report({"phase": "evaluating"})
    if judged is None:
        cand = Evaluation(*evaluate(job.served(job.held_out), val_targets, spec.labels,
                                    job.thresholds, job.present, job.task))
        collapse = collapse_reason(cand.decisions, val_targets, spec.labels)
    else:
        cut = dict.fromkeys(spec.labels, 0.5)
        cand = Evaluation(*evaluate(judged.probs, val_targets, spec.labels, cut,
                                    job.present, job.task))
        final = evaluate(judged.final, val_targets, spec.labels, cut, job.present, job.task)[1]
        collapse = collapse_reason(cand.decisions, val_targets, spec.labels,
                                   "samples judged out of fold") or \
            collapse_reason(final, val_targets, spec.labels, "labeled samples")
    present = job.present
    comparison = compare(
        parent.scores, cand.scores, spec.margin, spec.max_label_drop,
        collapse=collapse,
        changes=label_changes(parent.decisions[:, present], cand.decisions[:, present],
                              val_targets[:, present], [spec.labels[j] for j in present]))
    return cand, comparison


def export(job: Prepared, trained: Trained, weights: dict[str, Tensor], parent: Scores,
           cand: Scores, report: Report) -> tuple[Path, Path]:
    """Write the candidate artifact (parent recorded, metrics on its card) and, beside it,
    the trained tensors; returns both paths."""
    spec, card = job.spec, job.parent.card
    report({"phase": "exporting"})
    quieted = card_metrics(trained.details.get("background_rule"))
    out_dir = Path(spec.out)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    write_artifact(
        job.model.cpu(), out_dir, name=spec.name, version=spec.version, labels=spec.labels,
        thresholds=job.thresholds, preprocessing=card.preprocessing, parent=card.ref,
        decision=job.decision, metrics={
            "finetune.macro_f1": round(cand.macro_f1, 6),
            "finetune.parent_macro_f1": round(parent.macro_f1, 6),
            "finetune.exact_match": round(cand.exact_match, 6),
            "finetune.samples": float(len(job.data.images)),
            "finetune.held_out": float(len(job.held_out)),
            "finetune.steps": float(trained.steps),
            "finetune.lora": float(job.method == "lora"),
            "finetune.linear": float(job.method == "linear"),
        } | quieted)
    from safetensors.torch import save_file

    path = out_dir.parent / TRAINED_WEIGHTS
    save_file({k: v.cpu() for k, v in weights.items()}, str(path),
              metadata={"method": job.method, "parent": card.ref, "version": spec.version})
    return out_dir, path


def run_job(spec: JobSpec, report: Report = lambda _: None,
            log: Callable[[str], None] = lambda _: None) -> JobResult:
    """The whole job: prepare, score the parent (baseline), train, judge, and export the
    candidate if the gate passes it (or ``spec.always_export`` says so)."""
    started = time.monotonic()
    job = prepare_job(spec, report)
    parent = baseline(job, report)
    trained, weights = train_candidate(job, started, report, log)
    cand, comparison = judge(job, parent, report, trained.judged)
    candidate = trained_weights = None
    if comparison.promote or spec.always_export:
        out_dir, weights_path = export(job, trained, weights, parent.scores, cand.scores, report)
        candidate, trained_weights = str(out_dir), str(weights_path)
    if spec.checkpoint:
        Path(spec.checkpoint).unlink(missing_ok=True)
        adapt_checkpoint(spec).unlink(missing_ok=True)  # type: ignore[union-attr]
    return JobResult(
        method=job.method, samples=len(job.data.images), train=len(job.train_idx),
        held_out=len(job.held_out), skipped=tuple(job.data.skipped), labels=spec.labels,
        steps=trained.steps, resumed_from=trained.resumed_from,
        train_seconds=round(trained.seconds, 2), final_loss=round(trained.final_loss, 5),
        details=trained.details, comparison=GateReport.model_validate(comparison.to_dict()),
        candidate=candidate, trained_weights=trained_weights, version=spec.version,
        parent=job.parent.card.ref, device=job.device, threads=spec.threads,
        seconds=round(time.monotonic() - started, 2))
