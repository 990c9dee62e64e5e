"""Is the foundation model worth fine-tuning? A held-out generated site and, when given, real
photographs, against a model from scratch and a ridge classifier on pixels in the same run.

For each starting point (a model artifact, or ``scratch``: the same architecture, random):

- generated: an unseen site (``--site``), ``--shots`` labeled tiles per label, macro-F1 on a
  separate test set of that site: the model as published (its trained head and thresholds,
  no labels), a linear probe on its frozen features, a full fine-tune, and (for an artifact)
  the appliance's default fine-tune (``models.finetune.job.run_job`` with its defaults: the
  calibrated probe, its own held-out quarter and thresholds) scored with its thresholds;
- real (``--real DIR`` with ``healthy/`` and ``salt_damage/``, or any two class folders, the
  first meaning "no defect"): ``--real-train`` photos per class for training, the rest held
  out, split by file name with ``--seed``; balanced accuracy of a linear probe and a fine-tune,
  and of a ridge classifier on 32 x 32 pixels as the floor.

    .venv/bin/python -m scripts.bench_foundation [--model DIR ...] [--scratch] [--real DIR]

``--default`` builds (or reuses) the hub's default model; ``make bench`` runs it with
``--default --scratch``. Real photos are read only here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.artifact import load_artifact
from models.data import LABELS, tile_arrays
from models.preprocess import Preprocessing
from models.training.batches import TileSet
from models.training.evaluate import EvalConfig, features, fine_tune, linear_probe, select_shots
from models.training.metrics import Scores, score, score_at
from models.training.pretrain import PretrainConfig, model_config, predict
from models.vit import VisionTransformer, build_model

SALTSPOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "saltspot"
SALT = LABELS.index("efflorescence")
SOUND = LABELS.index("background")


def load_real(root: Path, size: int, per_class: int, seed: int) -> tuple[TileSet, TileSet]:
    """Two class folders (sorted: the first is "no defect"), split by file name with ``seed``."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) != 2:
        raise SystemExit(f"{root}: expected two class folders, found {len(classes)}")
    if classes[1].name.startswith("healthy"):
        classes.reverse()
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for k, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        order = np.random.default_rng([seed, k]).permutation(len(files))
        target = np.zeros(len(LABELS), dtype=np.float32)
        target[SALT if k else SOUND] = 1.0
        for rank, i in enumerate(order):
            image = (
                Image.open(files[i]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            )
            parts["train" if rank < per_class else "test"].append((np.asarray(image), target))
    sets = [
        TileSet(np.stack([a for a, _ in rows]), np.stack([t for _, t in rows]))
        for rows in (parts["train"], parts["test"])
    ]
    return sets[0], sets[1]


def balanced_accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean recall of the two classes; a photo is "defect" when its defect score beats sound."""
    said = probs[:, SALT] > probs[:, SOUND]
    truth = targets[:, SALT] >= 0.5
    return float(np.mean([np.mean(said[truth]), np.mean(~said[~truth])]))


def ridge_on_pixels(train: TileSet, test: TileSet, alpha: float = 10.0) -> float:
    """The ten-line floor: ridge regression on standardised 32 x 32 RGB pixels."""

    def x(s: TileSet) -> np.ndarray:
        small = [np.asarray(Image.fromarray(i).resize((32, 32))) for i in s.images]
        return np.stack(small).reshape(len(s), -1).astype(np.float64) / 255.0

    xtr, xte = x(train), x(test)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    y = train.targets[:, SALT] * 2 - 1
    w = np.linalg.solve(xtr.T @ xtr + alpha * np.eye(xtr.shape[1]), xtr.T @ y)
    bias = y.mean() - (xtr @ w).mean()
    score_ = xte @ w + bias
    probs = np.zeros((len(test), len(LABELS)))
    probs[:, SALT], probs[:, SOUND] = score_, -score_
    return balanced_accuracy(probs, test.targets)


def probe_and_finetune(
    model: VisionTransformer, train: TileSet, test: TileSet, cfg: EvalConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    pre = Preprocessing(model.cfg.img_size)
    probe = linear_probe(
        features(model, train, pre, "fp32"),
        torch.from_numpy(train.targets),
        features(model, test, pre, "fp32"),
        cfg.probe_steps,
        cfg.probe_lr,
        seed,
    )
    tuned = fine_tune(model, train, cfg, "fp32", seed)
    return probe, predict(tuned, test.images)


def appliance_default(parent: Path, train: TileSet, test: TileSet, seed: int
                      ) -> tuple[Scores, dict[str, Any]]:
    """The appliance's default fine-tune of ``parent`` on ``train`` (written as PNG samples),
    exported whatever its gate says, scored on ``test`` at the thresholds it calibrated."""
    import tempfile

    from models.finetune.job import run_job
    from models.finetune.spec import JobSpec

    card = load_artifact(parent).card
    with tempfile.TemporaryDirectory(prefix="spoke-bench-foundation-") as tmp:
        samples = []
        for i, (image, row) in enumerate(zip(train.images, train.targets, strict=True)):
            path = Path(tmp) / f"tile_{i:05d}.png"
            Image.fromarray(image).save(path)
            samples.append((str(path), tuple(n for n, on in zip(LABELS, row >= 0.5,
                                                                strict=True) if on)))
        result = run_job(JobSpec(parent=str(parent), samples=tuple(samples), labels=card.labels,
                                 out=str(Path(tmp) / "candidate"), name=card.name,
                                 version="0.0.1-bench", seed=seed, always_export=True))
        candidate = load_artifact(Path(tmp) / "candidate")
        probs = predict(candidate.build_model(), test.images)
        scores = score_at(probs, test.targets, LABELS, candidate.card.thresholds)
    return scores, {"promoted": result.comparison.promote, "seconds": result.seconds,
                    "held_out": result.held_out,
                    # None where the samples carry every label (models.finetune.quiet)
                    "background_rule": result.details.get("background_rule")}


def bench(
    name: str,
    model: VisionTransformer,
    thresholds: dict[str, float] | None,
    args: argparse.Namespace,
    artifact: Path | None = None,
) -> list[dict[str, object]]:
    size = model.cfg.img_size
    cfg = EvalConfig(PretrainConfig(), finetune_steps=args.finetune_steps, finetune_batch=32)
    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    images, targets = tile_arrays([args.site], args.pool + args.test, size)
    pool = TileSet(images[: args.pool], targets[: args.pool])
    test = TileSet(images[args.pool :], targets[args.pool :])
    if thresholds is not None:
        published = score_at(predict(model, test.images), test.targets, LABELS, thresholds)
        rows.append(
            {
                "start": name,
                "task": f"site {args.site}",
                "method": "as published, 0 labels",
                "macro_f1": round(published.macro_f1, 3),
                "per_label": published.per_label_f1,
            }
        )
    train = pool.subset(select_shots(pool.targets, args.shots, args.seed))
    probe, tuned = probe_and_finetune(model, train, test, cfg, args.seed)
    scored: list[tuple[str, Scores, dict[str, Any]]] = [
        (method, score(probs, test.targets, LABELS), {})
              for method, probs in (("linear probe", probe), ("fine-tune", tuned))]
    if artifact is not None:
        scored.append(("appliance default", *appliance_default(artifact, train, test, args.seed)))
    for method, s, extra in scored:
        rows.append(
            {
                "start": name,
                "task": f"site {args.site}, {args.shots}/label",
                "method": method,
                "macro_f1": round(s.macro_f1, 3),
                "per_label": {k: round(v, 2) for k, v in s.per_label_f1.items()},
                **extra,
            }
        )
    if args.real:
        rtrain, rtest = load_real(args.real, size, args.real_train, args.seed)
        task = f"{args.real.name}, {args.real_train}/class, seed {args.seed}"
        if thresholds is not None:
            rows.append(
                {
                    "start": name,
                    "task": task,
                    "method": "as published, 0 labels",
                    "balanced_accuracy": round(
                        balanced_accuracy(predict(model, rtest.images), rtest.targets), 3
                    ),
                }
            )
        probe, tuned = probe_and_finetune(model, rtrain, rtest, cfg, args.seed)
        for method, probs in (("linear probe", probe), ("fine-tune", tuned)):
            rows.append(
                {
                    "start": name,
                    "task": task,
                    "method": method,
                    "balanced_accuracy": round(balanced_accuracy(probs, rtest.targets), 3),
                }
            )
        if name == "scratch":
            rows.append(
                {
                    "start": "ridge on pixels",
                    "task": task,
                    "method": "ridge",
                    "balanced_accuracy": round(ridge_on_pixels(rtrain, rtest), 3),
                }
            )
    for row in rows:
        row["seconds"] = round(time.perf_counter() - t0, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, action="append", default=[])
    parser.add_argument(
        "--default", action="store_true", help="the hub's default model (built once, cached)"
    )
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="also a randomly initialised model, and ridge on pixels",
    )
    parser.add_argument("--scratch-preset", default="vit-tiny-p16-128")
    parser.add_argument(
        "--real",
        type=Path,
        default=SALTSPOT if SALTSPOT.is_dir() else None,
        help=f"two class folders of real photographs (default {SALTSPOT} when present)",
    )
    parser.add_argument("--no-real", dest="real", action="store_const", const=None,
                        help="generated data only")
    parser.add_argument("--real-train", type=int, default=50)
    parser.add_argument("--site", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=100)
    parser.add_argument("--pool", type=int, default=1200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.default:
        from models.training.foundation import build_foundation_model

        args.model.insert(0, build_foundation_model(0))
    rows = []
    for path in args.model:
        artifact = load_artifact(path)
        rows += bench(path.name, artifact.build_model(), artifact.card.thresholds, args, path)
    if args.scratch:
        scratch = build_model(model_config(args.scratch_preset), seed=args.seed)
        rows += bench("scratch", scratch, None, args)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
