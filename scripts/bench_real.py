"""Real photographs through the appliance's fine-tune path, with its defaults.

For a class-per-folder set of real photos (e.g. ``saltspot/healthy``, ``saltspot/salt_damage``)
it takes ``--per-class`` photos of each class for training (by file name and ``--seed``), holds
out the rest, and for each starting model -- the hub's foundation model and the same ViT from
scratch (random weights) -- runs exactly what a site engineer runs:

    spoke run --standalone --model PARENT            (a real daemon)
    spoke samples import TRAIN --map FOLDER=LABEL    (class-per-folder)
    spoke finetune start --wait                      (every default)

(and the foundation model again with the site adaptation, ``spoke finetune start --adapt
STEPS --wait`` for ``--adapt-steps``, 0 leaving that row out, and with each ``--method``),
then scores the model the appliance serves afterwards (the candidate if the gate promotes it,
else the parent), and the candidate itself, on the held-out photos through the serving
pipeline (tiles, ONNX Runtime, ``models.decide``). A ridge classifier on 32x32 pixels, trained
on the same photos, is the same-run baseline. Balanced accuracy of the defect label, and how
many held-out background photos get any defect reported (with and without the background rule of
``models.finetune.quiet`` where the card says it raised a label); the seed is printed. To choose
between methods without touching the test photos, score a validation split: ``--skip N``
with N the test run's ``--held-out`` leaves those photos out.

    .venv/bin/python -m scripts.bench_real DIR --map healthy=background \\
        --map salt_damage=efflorescence [--parent ARTIFACT] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.finetune import METHODS

REPO = Path(__file__).resolve().parents[1]


def spoke(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench_real: spoke {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_set(items: list[tuple[Path, str]], out: Path) -> None:
    """A class-per-folder copy (symlinks) of the training photos, under their folder names."""
    for path, _ in items:
        (out / path.parent.name).mkdir(parents=True, exist_ok=True)
        (out / path.parent.name / path.name).symlink_to(path.resolve())


def appliance_finetune(parent: Path, train: Path, mapping: list[str], work: Path,
                       options: tuple[str, ...] = ()
                       ) -> tuple[Path, Path | None, dict[str, Any], float]:
    """(the artifact the appliance serves afterwards, the candidate, the job, job seconds end
    to end). The daemon runs with ``allow_manual_promotion`` so that a candidate the gate
    refuses is still written and can be scored beside what is served."""
    state = work / "state"
    log = (work / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--standalone", "--model", str(parent),
         "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        env=os.environ | {"SPOKE_FINETUNE__ALLOW_MANUAL_PROMOTION": "true"})
    try:
        deadline = time.monotonic() + 300
        while not (state / "finetune" / "active-model.json").exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench_real: the daemon did not start; see {work}/daemon.log")
            time.sleep(0.5)
        spoke("samples", "import", str(train), "--state-dir", str(state),
              *[a for m in mapping for a in ("--map", m)])
        started = time.monotonic()
        job = json.loads(spoke("finetune", "start", "--state-dir", str(state), "--wait",
                               "--json", *options))
        seconds = time.monotonic() - started
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    result = job.get("result") or {}
    # A standalone daemon keeps a promoted candidate in the job (it has no model store to
    # activate it in); an enrolled one would serve it now.
    promoted = bool((result.get("comparison") or {}).get("promote"))
    candidate = Path(result["candidate"]) if result.get("candidate") else None
    served = candidate if promoted and candidate else parent
    return served, candidate, job, seconds


def served(artifact_dir: Path, rest: list[tuple[Path, str]], positive: str
           ) -> dict[str, Any]:
    """As the serving pipeline reports ``rest``: the balanced accuracy of ``positive``; how
    many background photos get any defect reported (an inspector's false alarms), and how many
    a defect other than ``positive`` (a label the site did not train); how many ``positive``
    photos get another defect too (not judged: nobody labeled those). For a fine-tune whose
    card raised labels the site did not train (``models.finetune.quiet``), the same with those
    labels at the thresholds they had before (the same probabilities)."""
    from models.artifact import load_artifact
    from models.backends.select import create_backend
    from models.decide import BACKGROUND, decide_many
    from models.pipeline import Pipeline

    artifact = load_artifact(artifact_dir)
    card = artifact.card
    pipeline = Pipeline(artifact, create_backend(artifact, "onnxruntime"))
    probs = np.array([[pipeline.run(p.read_bytes()).probs[n] for n in card.labels]
                      for p, _ in rest], dtype=np.float32)
    truth = np.array([lab == positive for _, lab in rest])
    defects = [j for j, n in enumerate(card.labels) if n != BACKGROUND]
    others = [j for j in defects if card.labels[j] != positive]

    def scores(thresholds: dict[str, float], suffix: str = "") -> dict[str, Any]:
        said = decide_many(probs, card.labels, thresholds)
        def share(rows: np.ndarray, among: np.ndarray) -> str:
            return f"{int((rows & among).sum())}/{int(among.sum())}"

        return {f"balanced_accuracy{suffix}": round(
                    balanced(said[:, card.labels.index(positive)], truth), 4),
                f"background_with_a_defect{suffix}": share(said[:, defects].any(axis=1), ~truth),
                f"background_with_another_defect{suffix}": share(said[:, others].any(axis=1),
                                                                 ~truth),
                f"{positive}_with_another_defect{suffix}": share(said[:, others].any(axis=1),
                                                                 truth)}

    raised = {k.removeprefix("finetune.raised_from."): v for k, v in card.metrics.items()
              if k.startswith("finetune.raised_from.")}
    out = scores(card.thresholds)
    return out | (scores(card.thresholds | raised, "_without_rule") if raised else {})


def balanced(said: np.ndarray, truth: np.ndarray) -> float:
    return float((said[truth].mean() + (~said[~truth]).mean()) / 2)


def ridge_on_pixels(train: list[tuple[Path, str]], rest: list[tuple[Path, str]],
                    positive: str, side: int = 32, lam: float = 10.0) -> float:
    """Standardised 32x32 pixels, ridge regression to +-1 (dual form), sign."""
    from PIL import Image

    def pixels(items: list[tuple[Path, str]]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side)),
                                    dtype=np.float32).ravel() / 255 for p, _ in items])

    a, b = pixels(train), pixels(rest)
    mean, std = a.mean(axis=0), a.std(axis=0) + 1e-6
    a, b = (a - mean) / std, (b - mean) / std
    y = np.array([1.0 if lab == positive else -1.0 for _, lab in train])
    w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(len(a)), y)
    return balanced(b @ w > 0, np.array([lab == positive for _, lab in rest]))


def scratch_twin(parent: Path, out: Path, seed: int) -> Path:
    """The parent's architecture, labels and preprocessing with random weights."""
    from models.artifact import load_artifact, write_artifact
    from models.vit import build_model

    card = load_artifact(parent).card
    write_artifact(build_model(card.config, seed), out, name=card.name, version=card.version,
                   labels=card.labels, preprocessing=card.preprocessing)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--map", action="append", default=[], metavar="FOLDER=LABEL")
    parser.add_argument("--parent", type=Path,
                        help="the starting model (default: the hub's foundation model, built "
                             "or reused from the cache)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, metavar="N",
                        help="score only the first N held-out photos of each class (a quick look)")
    parser.add_argument("--skip", type=int, default=0, metavar="N",
                        help="leave out the first N held-out photos of each class: with N the "
                             "test run's --held-out, the photos scored are a validation split "
                             "(neither trained on nor tested), for choosing a method")
    parser.add_argument("--adapt-steps", type=int, default=150, metavar="N",
                        help="the site-adaptation row's steps (0: no such row)")
    parser.add_argument("--method", action="append", default=[], choices=METHODS,
                        help="also a row for the foundation model fine-tuned with this method "
                             "(`spoke finetune start --method`; repeatable)")
    parser.add_argument("--no-scratch", action="store_true",
                        help="leave out the row from scratch (a job's time less)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from daemon.commands.samples import parse_map
    from daemon.finetune.folders import read_folders, split_per_class

    mapping = parse_map(args.map)
    found = read_folders(args.directory, mapping)
    train, rest = split_per_class(found, args.per_class, args.seed)
    if args.held_out or args.skip:
        end = None if args.held_out is None else args.skip + args.held_out
        rest = type(rest)(tuple(item for label in rest.labels for item in
                                [i for i in rest.items if i[1] == label][args.skip : end]),
                          rest.labels)
    defects = [lab for lab in found.labels if lab != "background"]
    if len(defects) != 1 or "background" not in found.labels:
        raise SystemExit("bench_real: the set needs one background folder and one defect folder")
    positive = defects[0]
    if args.parent is None:
        from models.training.foundation import build_foundation_model

        args.parent = build_foundation_model(seed=0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spoke-bench-real-") as tmp:
        root = Path(tmp)
        link_set(list(train.items), root / "train")
        runs: list[tuple[str, Path, tuple[str, ...]]] = [("foundation", args.parent, ())]
        if args.adapt_steps:
            runs.append((f"foundation, adapt {args.adapt_steps}", args.parent,
                         ("--adapt", str(args.adapt_steps))))
        runs += [(f"foundation, {method}", args.parent, ("--method", method))
                 for method in args.method]
        if not args.no_scratch:
            runs.append(("scratch", scratch_twin(args.parent, root / "scratch-parent",
                                                 args.seed), ()))
        for name, parent, options in runs:
            work = root / name.replace(", ", "-").replace(" ", "-")
            work.mkdir()
            served_model, candidate, job, seconds = appliance_finetune(
                parent, root / "train", args.map, work, options)
            result = job.get("result") or {}
            comparison = result.get("comparison") or {}
            items = list(rest.items)
            rows.append({
                "model": name, "parent": str(parent), "options": list(options),
                **{f"{k}_parent": v for k, v in served(parent, items, positive).items()},
                **served(served_model, items, positive),
                **({} if candidate is None else {
                    f"{k}_candidate": v for k, v in served(candidate, items, positive).items()}),
                "promoted": served_model != parent, "method": result.get("method"),
                "details": result.get("details"), "job_seconds": round(seconds, 1),
                "gate_reasons": comparison.get("reasons"), "status": job.get("status"),
                "error": job.get("error"),
            })
            print(json.dumps(rows[-1]), flush=True)
            if os.environ.get("SPOKE_BENCH_KEEP"):
                shutil.copytree(work, Path(os.environ["SPOKE_BENCH_KEEP"]) / work.name,
                                symlinks=True, dirs_exist_ok=True)
    rows.append({"model": "ridge on 32x32 pixels",
                 "balanced_accuracy": round(ridge_on_pixels(list(train.items), list(rest.items),
                                                            positive), 4)})
    print(f"\n{args.directory.name}: {positive} vs background, {args.per_class} per class for "
          f"training ({len(train.items)}), {len(rest.items)} held out (the first {args.skip} "
          f"of each class skipped), seed {args.seed}")
    print(f"{'model':<26} {'balanced acc':>12} {'(parent)':>9} {'(candidate)':>12} "
          f"{'promoted':>9} {'job s':>7} {'background with a defect (parent)':>34}")
    for r in rows:
        print(f"{r['model']:<26} {r['balanced_accuracy']:>12.3f} "
              f"{r.get('balanced_accuracy_parent', float('nan')):>9.3f} "
              f"{r.get('balanced_accuracy_candidate') or float('nan'):>12.3f} "
              f"{r.get('promoted', '-')!s:>9} {r.get('job_seconds', float('nan')):>7} "
              f"{r.get('background_with_a_defect', '-'):>9} "
              f"({r.get('background_with_a_defect_parent', '-')})")
        if "background_with_a_defect_without_rule" in r:
            print(f"{'  without the background rule':<26} "
                  f"{r['balanced_accuracy_without_rule']:>12.3f} {'':>40} "
                  f"{r['background_with_a_defect_without_rule']:>9}")
    if args.json:
        args.json.write_text(json.dumps({"set": str(args.directory), "seed": args.seed,
                                         "per_class": args.per_class, "positive": positive,
                                         "train": len(train.items), "held_out": len(rest.items),
                                         "skip": args.skip,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
