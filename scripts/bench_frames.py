"""Detections against ground truth on generated drone frames: is it the thresholds or the model?

For a model artifact (default: the demo's foundation model), generated frames of ``--site`` go
through the serving pipeline (ONNX Runtime, tiles, per-frame maximum; each ``--downscale``
in turn, as ``[uplink] downscale`` sets it) and are scored against the generator's boxes over
frame-label pairs, as ``spoke report --ground-truth`` does, with:

- the thresholds the model was published with;
- per-label thresholds with the best frame-level F1 on frames of ``--calibrate`` sites (never
  the scored site), i.e. calibrated for the decision the fleet actually makes;
- the oracle: the best frame-level F1 thresholds of the scored frames themselves, an upper
  bound on what any choice of thresholds could do (not a method).

    .venv/bin/python -m scripts.bench_frames [--model DIR] [--site 41] [--calibrate 999,998]
        [--downscale 1,2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from models.artifact import load_artifact
from models.backends.select import create_backend
from models.framecal import frame_probs, targets_of
from models.groundtruth import compare_frames
from models.pipeline import Pipeline, TileOptions
from models.training.metrics import calibrate_thresholds


def detections(probs: np.ndarray, labels: tuple[str, ...], thresholds: dict[str, float]
               ) -> list[frozenset[str]]:
    cut = np.array([thresholds[lab] for lab in labels])
    return [frozenset(lab for lab, on in zip(labels, row >= cut, strict=True) if on)
            for row in probs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        help="an artifact (default: the hub's default model, built or cached)")
    parser.add_argument("--site", type=int, default=41, help="the scored site (the demo's)")
    parser.add_argument("--calibrate", default="999,998", help="calibration sites, comma-separated")
    parser.add_argument("--frames", type=int, default=8, help="frames per site")
    parser.add_argument("--frame-size", default="1600x1200")
    parser.add_argument("--downscale", default="1",
                        help="downscales before tiling, comma-separated (one block of rows each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.frame_size.split("x"))
    sites = [int(s) for s in args.calibrate.split(",") if s]
    if args.site in sites:
        raise SystemExit("bench_frames: the scored site cannot be a calibration site")
    if args.model is None:
        from models.training.foundation import build_foundation_model

        args.model = build_foundation_model(seed=0)
    artifact = load_artifact(args.model)
    backend = create_backend(artifact, "onnxruntime")
    labels = artifact.card.labels
    truth_rows: list[frozenset[str]] = []
    report = {}
    print(f"site {args.site}: {args.frames} frames of {args.frame_size}, model {args.model}")
    with tempfile.TemporaryDirectory(prefix="spoke-bench-frames-") as tmp:
        for down in (int(d) for d in args.downscale.split(",")):
            pipeline = Pipeline(artifact, backend, TileOptions(downscale=down))
            probs, truth_rows = frame_probs(pipeline, args.site, args.frames, width, height,
                                            Path(tmp))
            cal = [frame_probs(pipeline, s, args.frames, width, height, Path(tmp))
                   for s in sites]
            cal_probs = np.concatenate([p for p, _ in cal])
            cal_truth = [t for _, ts in cal for t in ts]
            rows = {
                "published": dict(artifact.card.thresholds),
                f"frames of sites {args.calibrate}": calibrate_thresholds(
                    cal_probs, targets_of(cal_truth, labels), labels),
                "oracle (scored frames)": calibrate_thresholds(
                    probs, targets_of(truth_rows, labels), labels),
            }
            truth_map = {str(i): t for i, t in enumerate(truth_rows)}
            for name, thresholds in rows.items():
                said = detections(probs, labels, thresholds)
                gt = compare_frames({str(i): s for i, s in enumerate(said)}, truth_map)
                report[f"downscale {down}, {name}"] = {
                    "precision": gt.precision, "recall": gt.recall, "tp": gt.tp, "fp": gt.fp,
                    "fn": gt.fn, "thresholds": thresholds}
                print(f"downscale {down}, {name:<34} precision {gt.precision:.3f} "
                      f"recall {gt.recall:.3f} (tp {gt.tp}, fp {gt.fp}, fn {gt.fn})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
