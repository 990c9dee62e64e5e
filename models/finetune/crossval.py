"""The gate's cross-validated judgement of a probe candidate: every labeled sample judges.

With 50 labeled photos per class, a held-out quarter (24 photos) could not tell a 0.58 model
from a 0.67 one (docs/FOUNDATION-MODEL.md, session 6). The parent never trained on any labeled
sample, so it is scored on all of them; the candidate's recipe (the calibrated probe: its weight
decay, epochs and thresholds; the pool stays the one chosen on all samples) is re-fit once per
fold without that fold and decides the fold's samples (out-of-fold decisions, as served: the
maximum over a sample's tiles). The candidate the site gets is then fit on every sample, so
the estimate is of the recipe on (k-1)/k of the samples: if anything, pessimistic.

Probabilities here are *shifted*: ``p - threshold + 0.5``, so that one cut at 0.5 decides
every label whatever fold calibrated its threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.decide import BACKGROUND, Decision, image_probs
from models.finetune.probe import FOLDS, ProbeFit, folds, pool_features

#: ``(views, targets, owner) -> (pool, fit)``: the probe recipe on some samples.
Fit = Callable[[Tensor, np.ndarray, np.ndarray], tuple[str, ProbeFit]]


@dataclass(frozen=True)
class OutOfFold:
    """(N, L) shifted probabilities: each sample's from the fit that never saw it, and from
    the final fit on every sample (what the candidate serves on its own training samples)."""

    probs: np.ndarray
    final: np.ndarray
    folds: int


def shifted(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, L) ``probs`` moved so that 0.5 is each label's ``thresholds`` (L,)."""
    return (probs - thresholds[None, :] + 0.5).astype(np.float32)


def head_probs(head: nn.Linear, pool: str, view: Tensor, owner: np.ndarray, samples: int,
               labels: Sequence[str], decision: Decision) -> np.ndarray:
    """(N, L): ``head`` (one row per name in ``labels``) on the ``pool`` columns of one view's
    (M, F) tile features, each sample's tiles combined as ``decision`` serves them."""
    with torch.no_grad():
        logits = pool_features(view, pool) @ head.weight.t().float() + head.bias.float()
    return image_probs(torch.sigmoid(logits).numpy(), owner, samples, labels, decision)


def fit_scores(fit: ProbeFit, pool: str, view: Tensor, owner: np.ndarray,
               base: np.ndarray, labels: Sequence[str], decision: Decision) -> np.ndarray:
    """``base`` (N, L, shifted) with the labels ``fit`` trained replaced by its own shifted
    probabilities on the (M, F) tile features ``view``."""
    rows = list(fit.fitted)
    head = nn.Linear(fit.weight.shape[1], len(rows))
    with torch.no_grad():
        head.weight.copy_(fit.weight)
        head.bias.copy_(fit.bias)
    out = base.copy()
    out[:, rows] = shifted(head_probs(head, pool, view, owner, len(base),
                                      [labels[j] for j in rows], decision),
                           fit.thresholds[rows])
    return out


def outer_folds(targets: np.ndarray, seed: int) -> np.ndarray:
    """A fold per sample, stratified by label set; as many folds as every label with both
    positive and negative samples allows on both sides (2 to ``FOLDS``)."""
    y = targets >= 0.5
    pos, neg = y.sum(axis=0), (~y).sum(axis=0)
    both = (pos > 0) & (neg > 0)
    k = max(2, min(FOLDS, int(pos[both].min(initial=FOLDS)), int(neg[both].min(initial=FOLDS))))
    return folds(targets, k, seed + 1)


def _rows_of(samples: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tile rows of boolean ``samples`` (N,) and their owners renumbered 0..n-1."""
    number = np.cumsum(samples) - 1
    rows = samples[owner]
    return rows, number[owner[rows]]


def out_of_fold(views: Tensor, targets: np.ndarray, owner: np.ndarray, base: np.ndarray,
                seed: int, fit: Fit, final: tuple[str, ProbeFit], labels: Sequence[str],
                decision: Decision) -> OutOfFold:
    """Every sample's decision by the recipe ``fit`` re-fit without its fold (``views``
    (V, M, F), view 0 unaugmented; ``base`` (N, L) the shifted probabilities of the rows no
    fit trains), and the ``final`` fit's on every sample; tiles combined as ``decision``
    serves them."""
    fold = outer_folds(targets, seed)
    out = base.copy()
    for f in range(int(fold.max()) + 1):
        held = fold == f
        train_rows, train_owner = _rows_of(~held, owner)
        pool, fitted = fit(views[:, torch.from_numpy(train_rows)], targets[~held], train_owner)
        held_rows, held_owner = _rows_of(held, owner)
        out[held] = fit_scores(fitted, pool, views[0, torch.from_numpy(held_rows)],
                               held_owner, base[held], labels, decision)
    pool, fitted = final
    return OutOfFold(out, fit_scores(fitted, pool, views[0], owner, base, labels, decision),
                     int(fold.max()) + 1)


def balanced_accuracy(on: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(L,) the mean of each label's true-positive and true-negative rates."""
    pos = truth.sum(axis=0)
    neg = (~truth).sum(axis=0)
    tpr = (on & truth).sum(axis=0) / np.maximum(pos, 1)
    tnr = (~on & ~truth).sum(axis=0) / np.maximum(neg, 1)
    return (tpr + tnr) / 2


def merged(over_tiles: ProbeFit, averaged: ProbeFit, rows: Sequence[int]) -> ProbeFit:
    """``over_tiles`` with the label rows ``rows`` (indices into the labels) taken from
    ``averaged`` (fit on the same samples, on their means); a label neither fit (a fold
    without both classes of it) is left out."""
    rows = [j for j in rows if j in over_tiles.fitted]
    if not rows:
        return over_tiles
    where = [over_tiles.fitted.index(j) for j in rows]
    weight, bias = over_tiles.weight.clone(), over_tiles.bias.clone()
    weight[where], bias[where] = averaged.weight[where], averaged.bias[where]
    thresholds = over_tiles.thresholds.copy()
    thresholds[list(rows)] = averaged.thresholds[list(rows)]
    return dataclasses.replace(over_tiles, weight=weight, bias=bias, thresholds=thresholds)


def averaged_labels(views: Tensor, targets: np.ndarray, owner: np.ndarray, base: np.ndarray,
                    seed: int, fit: Callable[[Tensor, np.ndarray, np.ndarray, bool], ProbeFit],
                    pool: str, finals: tuple[ProbeFit, ProbeFit], labels: Sequence[str],
                    decision: Decision) -> tuple[int, ...]:
    """The fitted defect labels whose samples are better decided on their mean over tiles than on
    their maximum: each recipe re-fit per outer fold (``fit(views, targets, owner, mean)``),
    each sample decided out of fold, and the mean kept where its balanced accuracy is higher
    (a tie keeps the maximum). ``finals``: both recipes fit on every sample. Measured on
    real photos (docs/FOUNDATION-MODEL.md, session 15): the mean on most salt-damage splits,
    the maximum on generated cracks and stains."""
    over_tiles, averaged = finals
    truth = targets >= 0.5
    defects = [j for j in over_tiles.fitted if labels[j] != BACKGROUND]
    accuracy = []
    for on_means in (False, True):
        final = averaged if on_means else over_tiles
        served = dataclasses.replace(decision, mean=tuple(
            labels[j] for j in defects) if on_means else ())

        def recipe(v: Tensor, t: np.ndarray, o: np.ndarray, on_means: bool = on_means
                   ) -> tuple[str, ProbeFit]:
            return pool, fit(v, t, o, on_means)

        judged = out_of_fold(views, targets, owner, base, seed, recipe, (pool, final), labels,
                             served)
        accuracy.append(balanced_accuracy(judged.probs >= 0.5, truth))
    return tuple(j for j in defects if accuracy[1][j] > accuracy[0][j])
