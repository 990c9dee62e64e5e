"""Fine-tuning on this CPU: vit-tiny and vit-small, 100 labeled samples, each method.

For each model a "hub" starting point is pre-trained (supervised, short budget) on four
generated sites; then the site's own domain gives 100 labeled tiles (the job holds a quarter
out for its gate) and a separate test set of the same site. Each job runs exactly as the daemon
runs it (``python -m models.finetune.worker``, one thread), and we record its wall time
(process start to result, torch import included), the training time, the peak resident memory
of the worker, and macro-F1 / exact match on the site's test set before and after.

    .venv/bin/python -m scripts.bench_finetune [--size 64] [--models tiny,small] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from models.finetune.spec import METHODS

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": "vit-tiny-p16-224", "small": "vit-small-p16-224"}
SITE = 17
HUB_DOMAINS = (1, 2, 3, 4)


def peak_rss_run(argv: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS MiB, stdout) of a child, RSS polled every 50 ms."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=REPO, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, ps.memory_info().rss)
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    return proc.returncode, time.monotonic() - start, peak / 2**20, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64, help="input size in pixels")
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np

    from models.artifact import load_artifact
    from models.data import read_labels, tile_arrays, write_tiles
    from models.finetune.job import JobSpec, predict
    from models.training.metrics import score
    from models.training.pretrain import PretrainConfig, pretrain

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        root = Path(tmp)
        tiles = root / "site"
        write_tiles(tiles, SITE, args.samples, size=args.size)
        samples = tuple((str(tiles / r.file), tuple(sorted(r.labels)))
                        for r in read_labels(tiles))
        test_x, test_y = tile_arrays([SITE], args.test, args.size, start=args.samples)
        for short in args.models.split(","):
            preset = PRESETS[short]
            hub = root / f"hub-{short}"
            t0 = time.monotonic()
            pretrain(PretrainConfig(method="supervised", preset=preset, img_size=args.size,
                                    domains=HUB_DOMAINS, tiles_per_domain=300,
                                    steps=args.pretrain_steps, batch_size=32, lr=1e-3,
                                    precision="auto", threads=1),
                     hub, progress=False, log=lambda _: None, name="crack-vit")
            print(f"{preset} @ {args.size}px: hub model pre-trained in "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
            parent = load_artifact(hub)
            pre = parent.card.preprocessing
            labels = parent.card.labels
            before = score(predict(parent.build_model(), test_x, pre, "cpu"), test_y, labels)
            for method in METHODS:
                job = root / f"job-{short}-{method}"
                job.mkdir()
                spec = JobSpec(parent=str(hub), samples=samples, labels=labels,
                               out=str(job / "candidate"), name="crack-vit",
                               version="0.1.1-ft.1", method=method, threads=1,
                               checkpoint=str(job / "checkpoint.pt"), always_export=True,
                               margin=0.0, max_label_drop=1.0)
                (job / "job.json").write_text(json.dumps(spec.to_dict()))
                env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
                code, wall, rss, out = peak_rss_run(
                    [sys.executable, "-m", "models.finetune.worker", str(job)], env)
                result = json.loads((job / "result.json").read_text()) if code == 0 else {}
                if code != 0:
                    print(f"{short} {method}: worker failed ({code}): {out[-500:]}")
                    continue
                tuned = load_artifact(Path(result["candidate"])).build_model()
                after = score(predict(tuned, test_x, pre, "cpu"), test_y, labels)
                load = os.getloadavg()[0]
                row = {
                    "model": preset, "size": args.size, "method": method,
                    "wall_s": round(wall, 1), "train_s": result["train_seconds"],
                    "steps": result["steps"], "peak_rss_mib": round(rss),
                    "macro_f1_before": round(before.macro_f1, 3),
                    "macro_f1_after": round(after.macro_f1, 3),
                    "exact_before": round(before.exact_match, 3),
                    "exact_after": round(after.exact_match, 3),
                    "gate_held_out": result["comparison"]["candidate"]["macro_f1"],
                    "load": round(load, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| model | method | wall (s) | train (s) | steps | peak RSS (MiB) | site macro-F1 "
          "before -> after | exact match before -> after | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} @ {r['size']} px | {r['method']} | {r['wall_s']} | "
              f"{r['train_s']} | {r['steps']} | {r['peak_rss_mib']} | "
              f"{r['macro_f1_before']:.3f} -> {r['macro_f1_after']:.3f} "
              f"({r['macro_f1_after'] - r['macro_f1_before']:+.3f}) | "
              f"{r['exact_before']:.3f} -> {r['exact_after']:.3f} | {r['load']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    del np


if __name__ == "__main__":
    main()
