"""Can an on-site fine-tune of a parent that decides per frame beat it? Head rules, offline.

The demo's fleet model decides per frame (each label's maximum over a frame's tiles, downscale
2), and its default fine-tune trains only the head on frozen features. So every rule is
compared here on the same cached features of the same frames of ``--site``:

- frames 0-15 are the demo's two flights (reported, never chosen on); the next ``--survey``
  (64, what the demo labels; repeat it to compare sizes on the same frames) the labeled survey,
  split as the job splits it (``models.finetune.heldout.frame_split``: calibration / gate);
  the last 128 are validation frames, the ones to choose by;
- rules: the parent (the same-run baseline); the parent with thresholds recalibrated on the
  calibration frames; the job's probe on the site's 100 tiles (token pool) with thresholds from
  the calibration frames (the default since session 6); a warm start (L2-SP: the parent's
  head, trained on the tiles and on the calibration frames as multiple instances, a frame's
  logit the maximum of its tiles', pulled towards the parent's head) with the parent's
  thresholds and with out-of-fold ones; and, as an upper bound and not a method, a head
  trained and thresholded on the validation frames themselves.

Each row: macro-F1 as the gate computes it, and precision / recall over frame-label pairs, on
the validation, gate and flight frames; its validation macro-F1 over the parent's; and the
paired bootstrap 95 % interval of its validation macro-F1 minus the parent's (the frames
resampled, both scored on the same resample): a rule beats the parent beyond noise where the
interval is above 0.

    .venv/bin/python -m scripts.bench_frame_head [--site 41] [--survey 64 [--survey 128]]
        [--frames N] [--work DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.artifact import Artifact, load_artifact
from models.data import read_labels, write_frames, write_tiles
from models.decide import decide_many
from models.finetune.augment import drone_augment
from models.finetune.heldout import frame_split
from models.finetune.job import load_pixels
from models.finetune.probe import fit_probe, pool_features, token_features
from models.groundtruth import compare_frames
from models.pipeline import TileOptions, serving_tiles
from models.training.metrics import calibrate_thresholds, score

FLIGHTS = (range(0, 8), range(8, 16))
VALIDATION = 128
VIEWS = 8
FOLDS = 4
RESAMPLES = 1000


@dataclass(frozen=True)
class Site:
    """The parent's pooled features of every frame's served tiles and of the site's tiles."""

    frame_x: Tensor  # (M, F) tiles of all frames
    owner: Tensor  # (M,) frame of each tile
    frame_y: np.ndarray  # (N, L)
    tile_x: Tensor  # (V, T, F) views of the labeled tiles
    tile_y: Tensor  # (T, L)


def site_features(parent: Artifact, site: int, frames: int, work: Path) -> Site:
    """Generate (once, under ``work``) and embed ``frames`` frames and 100 tiles of ``site``."""
    pre, labels = parent.card.preprocessing, parent.card.labels
    model, pool = parent.build_model().eval(), parent.card.config.global_pool
    frame_dir, tile_dir = work / f"site-{site}-frames-{frames}", work / f"site-{site}-tiles"
    if not frame_dir.is_dir():
        write_frames(frame_dir, site, frames, 1600, 1200)
    if not tile_dir.is_dir():
        write_tiles(tile_dir, site, 100, pre.input_size)
    options = TileOptions(downscale=parent.card.decision.downscale)
    xs, owner, ys = [], [], []
    for i, row in enumerate(sorted(read_labels(frame_dir), key=lambda r: r.file)):
        tiles = serving_tiles(load_pixels(str(frame_dir / row.file)), pre, options).tiles
        xs.append(pool_features(token_features(model, tiles, pre, "cpu"), pool))
        owner += [i] * len(tiles)
        ys.append([float(n in row.labels) for n in labels])
    rows = read_labels(tile_dir)
    images = np.stack([load_pixels(str(tile_dir / r.file)) for r in rows])
    views = [images] + [drone_augment(images, np.random.default_rng([0, v]))
                        for v in range(1, VIEWS)]
    tile_x = torch.stack([pool_features(token_features(model, v, pre, "cpu"), pool)
                          for v in views])
    tile_y = torch.tensor([[float(n in r.labels) for n in labels] for r in rows])
    return Site(torch.cat(xs), torch.tensor(owner), np.array(ys, np.float32), tile_x, tile_y)


def frame_logits(x: Tensor, owner: Tensor, frames: int, w: Tensor, b: Tensor) -> Tensor:
    """(frames, L): each label's maximum tile logit per frame (the served decision)."""
    logits = x @ w.T + b
    out = torch.full((frames, w.shape[0]), -torch.inf)
    return out.scatter_reduce(0, owner[:, None].expand_as(logits), logits, "amax")


def balanced(y: Tensor) -> Tensor:
    pos, neg = y.sum(0).clamp(min=1), (1 - y).sum(0).clamp(min=1)
    return torch.where(y > 0.5, len(y) / (2 * pos), len(y) / (2 * neg))


def warm_start(s: Site, frames: np.ndarray, w0: Tensor, b0: Tensor, penalty: float = 1e-3,
               epochs: int = 300, lr: float = 0.01) -> tuple[Tensor, Tensor]:
    """The parent's head trained on the tiles (balanced BCE over all views) and on ``frames``
    as bags of tiles (balanced BCE of each defect's frame maximum), pulled towards the
    parent's head by ``penalty`` times the squared distance."""
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    tx = s.tile_x.reshape(-1, s.tile_x.shape[-1])
    ty = s.tile_y.repeat(len(s.tile_x), 1)
    tw = balanced(s.tile_y).repeat(len(s.tile_x), 1)
    keep = torch.isin(s.owner, torch.from_numpy(frames))
    renumber = torch.full((len(s.frame_y),), -1, dtype=torch.long)
    renumber[torch.from_numpy(frames)] = torch.arange(len(frames))
    fx, fo = s.frame_x[keep], renumber[s.owner[keep]]
    fy = torch.from_numpy(s.frame_y[frames])
    fw = balanced(fy)
    fw[:, 0] = 0  # background: a frame's maximum of it says nothing
    for _ in range(epochs):
        loss = (F.binary_cross_entropy_with_logits(tx @ w.T + b, ty, reduction="none")
                * tw).mean()
        bags = frame_logits(fx, fo, len(frames), w, b)
        loss = loss + (F.binary_cross_entropy_with_logits(bags, fy, reduction="none")
                       * fw).mean()
        loss = loss + penalty * ((w - w0) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def compare(s: Site, parent: Artifact, surveyed: int) -> None:
    """Print every rule's row when the first ``surveyed`` frames after the flights are
    labeled (split as the job splits them) and the last ``VALIDATION`` frames choose."""
    labels, thresholds = parent.card.labels, dict(parent.card.thresholds)
    n = len(s.frame_y)
    survey = np.arange(FLIGHTS[1].stop, FLIGHTS[1].stop + surveyed)
    cal_i, gate_i = frame_split(s.frame_y[survey], labels, 0)
    cal, gate, val = survey[cal_i], survey[gate_i], np.arange(n - VALIDATION, n)
    sets = {"validation": val, "gate": gate, "flight 1": np.array(FLIGHTS[0]),
            "flight 2": np.array(FLIGHTS[1])}
    model = parent.build_model()
    w0, b0 = model.head.weight.detach(), model.head.bias.detach()

    def probs(w: Tensor, b: Tensor) -> np.ndarray:
        return torch.sigmoid(frame_logits(s.frame_x, s.owner, n, w, b)).numpy()

    def on(frames: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return calibrate_thresholds(p[frames], s.frame_y[frames], labels)

    def out_of_fold(frames: np.ndarray) -> dict[str, float]:
        fold = np.random.default_rng(0).permutation(len(frames)) % FOLDS
        p = np.zeros((len(frames), len(labels)), np.float32)
        for f in range(FOLDS):
            p[fold == f] = probs(*warm_start(s, frames[fold != f], w0, b0))[frames[fold == f]]
        return calibrate_thresholds(p, s.frame_y[frames], labels)

    def macro_f1(said: np.ndarray, frames: np.ndarray) -> float:
        present = np.flatnonzero(s.frame_y[frames].sum(0) > 0)
        return score(said[:, present].astype(np.float32), s.frame_y[frames][:, present],
                     [labels[j] for j in present]).macro_f1

    fit = fit_probe(s.tile_x, s.tile_y.numpy(), 0)
    wp, bp = w0.clone(), b0.clone()
    wp[list(fit.fitted)], bp[list(fit.fitted)] = fit.weight, fit.bias
    p_parent, p_probe = probs(w0, b0), probs(wp, bp)
    p_warm = probs(*warm_start(s, cal, w0, b0))
    p_bound = probs(*warm_start(s, val, w0, b0))
    rows = [
        ("parent (baseline)", p_parent, thresholds),
        ("parent, thresholds on calibration frames", p_parent, on(cal, p_parent)),
        ("probe on tiles, thresholds on calibration (default)", p_probe, on(cal, p_probe)),
        ("warm start + frames, parent's thresholds", p_warm, thresholds),
        ("warm start + frames, out-of-fold thresholds", p_warm, out_of_fold(cal)),
        ("upper bound: head and thresholds on validation", p_bound, on(val, p_bound)),
    ]
    print(f"{surveyed} labeled frames: calibration {len(cal)}, gate {len(gate)}, validation "
          f"{len(val)} (frames {val[0]}-{val[-1]}); macro-F1 (precision/recall)")
    resamples = np.random.default_rng(0).integers(0, len(val), (RESAMPLES, len(val)))
    said_parent = decide_many(p_parent[val], labels, thresholds)
    parent_f1 = [macro_f1(said_parent[r], val[r]) for r in resamples]
    base = None
    for name, p, thr in rows:
        said_val = decide_many(p[val], labels, thr)
        gain = np.percentile([macro_f1(said_val[r], val[r]) - f
                              for r, f in zip(resamples, parent_f1, strict=True)], [2.5, 97.5])
        cells = []
        for frames in sets.values():
            said = decide_many(p[frames], labels, thr)
            named = {str(i): {lab for lab, on_ in zip(labels, r, strict=True) if on_}
                     for i, r in zip(frames, said, strict=True)}
            truth = {str(i): {lab for lab, t in zip(labels, s.frame_y[i], strict=True) if t}
                     for i in frames}
            gt = compare_frames(named, truth)
            cells.append(f"{macro_f1(said, frames):.3f} ({gt.precision:.2f}/{gt.recall:.2f})")
        val_f1 = float(cells[0].split()[0])
        base = base or val_f1
        print(f"{name:<52} " + "  ".join(f"{k} {c}" for k, c in zip(sets, cells, strict=True))
              + f"  ratio {val_f1 / base:.3f}  gain 95% [{gain[0]:+.3f}, {gain[1]:+.3f}]",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=int, default=41, help="the scored site (the demo's)")
    parser.add_argument("--survey", type=int, action="append",
                        help="labeled survey frames after the flights' 16 (repeat to compare; "
                        "default 64, what the demo labels)")
    parser.add_argument("--frames", type=int,
                        help=f"frames 0..N-1 (default: the largest survey, then {VALIDATION} "
                        "validation frames)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/spoke-bench-frame-head"))
    parser.add_argument("--parent", type=Path,
                        help="the fleet model packaged as the demo packages it (default: "
                        "build or reuse the foundation model and calibrate it as the demo does)")
    args = parser.parse_args()
    surveys = sorted(set(args.survey or [64]))
    need = FLIGHTS[1].stop + surveys[-1] + VALIDATION
    args.frames = args.frames or need
    if args.frames < need:
        raise SystemExit(f"bench_frame_head: --frames must be at least {need} (the flights, "
                         f"the survey and {VALIDATION} validation frames)")
    from scripts.demo import foundation_artifacts

    args.work.mkdir(parents=True, exist_ok=True)
    if args.parent is None:
        args.parent = args.work / "fleet" / "1.1.0"
        if not args.parent.is_dir():
            foundation_artifacts(args.work / "fleet", args.work / "calibration")
    parent = load_artifact(args.parent)
    torch.set_num_threads(2)
    s = site_features(parent, args.site, args.frames, args.work)
    print(f"site {args.site}: {len(s.frame_y)} frames")
    for surveyed in surveys:
        compare(s, parent, surveyed)


if __name__ == "__main__":
    main()
