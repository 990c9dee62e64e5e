"""The default few-shot method: a calibrated linear probe on frozen, cached features.

With 20 to 200 labels per class, training the encoder overfits or collapses; a linear head on
good frozen features does not. The recipe:

1. features of each training image and of augmented views of it (class token and mean patch
   token side by side), computed once; an image larger than the model's input is the tiles
   the serving pipeline cuts from it (each tile carries the image's labels);
2. standardised, then a class-balanced logistic regression per label, by full-batch AdamW;
3. the weight decay and the number of epochs (early stopping) chosen by k-fold
   cross-validation on the training samples (all views and tiles of a sample stay in one
   fold), on the class-balanced log-loss of each sample's maximum over its tiles;
4. each label's threshold set where its out-of-fold F1 is best, on that same maximum: the
   decision the pipeline serves (measured on real photos: calibrating a probe trained on
   downscaled photos and serving their native-scale tiles lost 0.06 to 0.09 of balanced
   accuracy, docs/FOUNDATION-MODEL.md);
5. a final fit on every training sample, folded back into raw feature space so the head is a
   plain ``nn.Linear`` on the model's pooled embedding.

The held-out split is never touched here: it stays the gate's honest test.
Labels with no positive or no negative training sample are not fitted (their rows stay).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.finetune.augment import drone_augment
from models.preprocess import Preprocessing
from models.training.metrics import f1_per_label
from models.vit import VisionTransformer

FOLDS = 4
WEIGHT_DECAYS = (1e-2, 1e-1, 1.0, 10.0)
MAX_EPOCHS = 200
CHECK_EVERY = 5
LR = 0.01


@dataclass(frozen=True)
class ProbeFit:
    weight: Tensor  # (L, F), raw feature space
    bias: Tensor  # (L,)
    fitted: tuple[int, ...]  # label indices this fit trained
    thresholds: np.ndarray  # (L,), calibrated for fitted labels
    weight_decay: float
    epochs: int
    cv_loss: float
    cv_f1: float  # out-of-fold macro-F1 over fitted labels at the calibrated thresholds
    #: Fit on each sample's mean tile features, thresholds 0.5 (``fit_probe(averaged=True)``).
    averaged: bool = False


def folds(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per sample, stratified by each sample's label set."""
    rng = np.random.default_rng([seed, 17])
    keys = [tuple(row) for row in (targets >= 0.5).astype(int)]
    out = np.zeros(len(targets), dtype=np.int64)
    for key in sorted(set(keys)):
        group = np.asarray([i for i, kk in enumerate(keys) if kk == key])
        group = group[rng.permutation(len(group))]
        out[group] = (np.arange(len(group)) + int(rng.integers(k))) % k
    return out


def _balance(y: Tensor) -> Tensor:
    """Per-element weights giving positives and negatives of each label equal total weight."""
    pos = y.sum(dim=0).clamp(min=1)
    neg = (1 - y).sum(dim=0).clamp(min=1)
    n = y.shape[0]
    return torch.where(y > 0.5, n / (2 * pos), n / (2 * neg))


def _train(x: Tensor, y: Tensor, masks: Tensor, wds: Tensor, epochs: int, seed: int,
           every: int, probe: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """M logistic regressions at once, by full-batch Adam with decoupled weight decay ``wds``
    (M,): model m trains on the rows of standardised ``x`` (R, F) where ``masks[m]`` (M, R) is
    1. Returns W (M, L, F), b (M, L) and every ``every`` epochs the logits (M, P, L) of
    ``probe`` (P, F)."""
    gen = torch.Generator().manual_seed(seed)
    m, labels = masks.shape[0], y.shape[1]
    w = (torch.randn(m, labels, x.shape[1], generator=gen) * 0.01).requires_grad_(True)
    b = torch.zeros(m, 1, labels, requires_grad=True)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    weights = _balance(y)[None] * masks[:, :, None]
    total = weights.sum(dim=(1, 2))
    curve: list[Tensor] = []
    for epoch in range(1, epochs + 1):
        logits = (x @ w.reshape(m * labels, -1).t()).reshape(-1, m, labels).transpose(0, 1) + b
        bce = F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none")
        grads = torch.autograd.grad(((bce * weights).sum(dim=(1, 2)) / total).sum(), (w, b))
        with torch.no_grad():
            for p, g, (m1, m2) in zip((w, b), grads, moments, strict=True):
                _adam(p, g, m1, m2, epoch)
            w.mul_(1 - LR * wds[:, None, None])
            if epoch % every == 0:
                curve.append(torch.einsum("pf,mlf->mpl", probe, w) + b)
    return w.detach(), b.detach()[:, 0], curve


def _adam(p: Tensor, g: Tensor, m1: Tensor, m2: Tensor, step: int,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam step in place (written out: ``torch.optim`` costs seconds of imports in a
    fresh worker, longer than the whole fit)."""
    m1.mul_(betas[0]).add_(g, alpha=1 - betas[0])
    m2.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
    m_hat = m1 / (1 - betas[0] ** step)
    v_hat = m2 / (1 - betas[1] ** step)
    p.sub_(LR * m_hat / (v_hat.sqrt() + eps))


def best_thresholds(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, F1) per label: the cut between sorted probabilities with the best F1."""
    thr = np.full(probs.shape[1], 0.5, dtype=np.float32)
    f1 = np.zeros(probs.shape[1], dtype=np.float64)
    for j in range(probs.shape[1]):
        p, t = probs[:, j], targets[:, j] >= 0.5
        values = np.unique(p)
        cuts = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2,
                               [values[-1] + 1e-6]])
        pred = p[None, :] >= cuts[:, None]
        tp = (pred & t).sum(axis=1)
        fp = (pred & ~t).sum(axis=1)
        fn = (~pred & t).sum(axis=1)
        scores = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.flatnonzero(scores == scores.max())
        i = int(best[len(best) // 2])  # the middle of a plateau, not its edge
        thr[j], f1[j] = float(np.clip(cuts[i], 1e-4, 1 - 1e-4)), float(scores[i])
    return thr, f1


def sample_means(views: Tensor, owner: np.ndarray, samples: int) -> Tensor:
    """(V, N, F): each sample's mean over its tiles' (V, M, F) features."""
    index = torch.from_numpy(owner)
    sums = torch.zeros(views.shape[0], samples, views.shape[2]).index_add_(1, index, views)
    return sums / torch.bincount(index, minlength=samples).clamp(min=1)[None, :, None]


def fit_probe(views: Tensor, targets: np.ndarray, seed: int = 0,
              max_epochs: int = MAX_EPOCHS, owner: np.ndarray | None = None,
              averaged: bool = False) -> ProbeFit:
    """``views`` (V, M, F): V feature views of M rows (view 0 unaugmented); row i is a tile of
    training sample ``owner[i]`` (default: one row per sample); ``targets`` (N, L) multi-hot
    per sample. Every tile of a sample carries its labels and stays in its fold; early
    stopping and the thresholds read a sample's maximum over its unaugmented tiles, which is
    what the serving pipeline reports for an image. Early stopping looks at most
    ``max_epochs`` far.

    With ``averaged``, a sample is one row per view, the mean of its tiles' features: the head on
    it is the mean of the tiles' logits, what a decision's ``mean`` labels serve. Its
    thresholds stay 0.5, the class-balanced fit's own cut (on real photos an F1-calibrated
    cut on photo means cost 0.06 of balanced accuracy, docs/FOUNDATION-MODEL.md)."""
    if averaged and owner is not None:
        views, owner = sample_means(views, np.asarray(owner), len(targets)), None
    v, m, _ = views.shape
    n = len(targets)
    owner = np.arange(m) if owner is None else np.asarray(owner)
    y_np = (targets >= 0.5).astype(np.float32)
    fitted = tuple(j for j in range(y_np.shape[1]) if 0 < y_np[:, j].sum() < n)
    if not fitted:
        raise ValueError("no label has both positive and negative training samples")
    y = torch.from_numpy(y_np[:, fitted])
    mean = views.reshape(-1, views.shape[-1]).mean(dim=0)
    std = views.reshape(-1, views.shape[-1]).std(dim=0).clamp(min=1e-6)
    z = (views - mean) / std
    k = max(2, min(FOLDS, int(y.sum(dim=0).min()), int((1 - y).sum(dim=0).min())))
    fold = folds(y_np[:, fitted], k, seed)
    every = min(CHECK_EVERY, max_epochs)
    checks = max_epochs // every
    x = z.reshape(-1, z.shape[-1])
    rows_y = y[torch.from_numpy(owner)].repeat(v, 1)
    row_fold = torch.from_numpy(np.tile(fold[owner], v))
    grid = [(wd, f) for wd in WEIGHT_DECAYS for f in range(k)]
    masks = torch.stack([(row_fold != f).float() for _, f in grid])
    wds = torch.tensor([wd for wd, _ in grid])
    _, _, curve = _train(x, rows_y, masks, wds, checks * every, seed, every, z[0])
    weights = _balance(y)
    per_sample = torch.from_numpy(owner)[:, None].expand(-1, len(fitted))
    best: tuple[float, float, int, np.ndarray] | None = None
    for i, wd in enumerate(WEIGHT_DECAYS):
        for c, logits in enumerate(curve):
            oof = torch.zeros(n, len(fitted))
            for f in range(k):
                held = torch.from_numpy(fold == f)
                peak = torch.full((n, len(fitted)), -torch.inf).scatter_reduce(
                    0, per_sample, logits[i * k + f], reduce="amax")
                oof[held] = peak[held]
            loss = float(F.binary_cross_entropy_with_logits(oof, y, weight=weights))
            if best is None or loss < best[0] - 1e-9:
                best = (loss, wd, (c + 1) * every, torch.sigmoid(oof).numpy())
    assert best is not None
    loss, wd, epochs, oof_probs = best
    if averaged:
        thr_fitted = np.full(len(fitted), 0.5, dtype=np.float32)
        f1 = f1_per_label(oof_probs >= 0.5, y_np[:, fitted] >= 0.5)
    else:
        thr_fitted, f1 = best_thresholds(oof_probs, y_np[:, fitted])
    w_all, b_all, _ = _train(x, rows_y, torch.ones(1, len(x)), torch.tensor([wd]),
                             epochs, seed, epochs, z[0])
    w, b = w_all[0], b_all[0]
    w_raw = w / std
    b_raw = b - w_raw @ mean
    thresholds = np.full(y_np.shape[1], 0.5, dtype=np.float32)
    thresholds[list(fitted)] = thr_fitted
    return ProbeFit(w_raw, b_raw, fitted, thresholds, wd, epochs, loss, float(f1.mean()), averaged)


#: Pools a candidate may read: the parent's own, or class token and mean patch token together
#: (a superset of either, so rows the probe does not fit keep their exact outputs).
WIDE_POOL = "token+avg"


@torch.inference_mode()
def token_features(model: VisionTransformer, images: np.ndarray, pre: Preprocessing,
                   device: str, batch: int = 32) -> Tensor:
    """(N, 2D): the class token and the mean patch token of the final (normed) tokens."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(pre.normalize(images[i : i + batch])).to(device)
        tokens = model.forward_features(x).float()
        out.append(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1).cpu())
    return torch.cat(out)


def feature_views(model: VisionTransformer, images: np.ndarray, pre: Preprocessing,
                  device: str, seed: int, max_views: int, deadline: float | None,
                  report: Callable[[int, int], None] = lambda v, n: None) -> Tensor:
    """(V, N, 2D): view 0 as the images are, then augmented views until ``max_views`` or the
    ``deadline`` (``time.monotonic()``); at least two views."""
    started = time.monotonic()
    views = [token_features(model, images, pre, device)]
    report(1, max_views)
    while len(views) < max_views:
        if deadline is not None and len(views) >= 2:
            per_view = (time.monotonic() - started) / len(views)
            if time.monotonic() + per_view > deadline:
                break
        rng = np.random.default_rng([seed, len(views)])
        views.append(token_features(model, drone_augment(images, rng), pre, device))
        report(len(views), max_views)
    return torch.stack(views)


def pool_features(features: Tensor, pool: str) -> Tensor:
    """The columns of ``token_features`` output that ``pool`` reads."""
    d = features.shape[-1] // 2
    return {"token": features[..., :d], "avg": features[..., d:], WIDE_POOL: features}[pool]


def install_head(model: VisionTransformer, fit: ProbeFit, pool: str) -> None:
    """Give ``model`` a head on ``pool`` with the fitted rows of ``fit``; the other rows keep
    the parent's weights, placed where the parent's pool sits in the new layout."""
    old, old_pool = model.head, model.cfg.global_pool
    model.cfg = dataclasses.replace(model.cfg, global_pool=pool)
    new = nn.Linear(model.cfg.pooled_dim, old.out_features)
    d = model.cfg.embed_dim
    with torch.no_grad():
        new.weight.zero_()
        if pool == old_pool:
            new.weight.copy_(old.weight)
        else:  # the wide pool: [token | avg]
            at = 0 if old_pool == "token" else d
            new.weight[:, at : at + old.in_features].copy_(old.weight)
        new.bias.copy_(old.bias)
        rows = list(fit.fitted)
        new.weight[rows] = fit.weight.to(new.weight.dtype)
        new.bias[rows] = fit.bias.to(new.bias.dtype)
    model.head = new.to(old.weight.device)
