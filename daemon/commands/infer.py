"""``spoke infer``: run a model artifact on image files; a bad file is reported, not fatal."""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from appliance.cli import print_json
from models.artifact import load_artifact
from models.backends import BACKEND_NAMES, Backend, create_backend
from models.errors import ImageError, ImageTooLarge
from models.images import ImageLimits
from models.pipeline import ImageResult, Pipeline, TileOptions, render_overlay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="find defects in drone images with a model artifact")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG or TIFF")
    p.add_argument("--model", type=Path, required=True, help="artifact directory or tar")
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default="auto",
        help="inference engine (default auto: the fastest here, measured once and remembered)",
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="with --backend auto: measure the engines again instead of reusing the stored pick",
    )
    p.add_argument(
        "--overlap", type=int, help="tile overlap in model pixels (default: a seventh of a tile)"
    )
    p.add_argument(
        "--downscale",
        type=int,
        default=1,
        help="shrink images by this integer factor before tiling (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument(
        "--overlay",
        type=Path,
        metavar="OUT.png",
        help="write a heatmap overlay PNG (OUT-<image>.png when several images)",
    )
    p.set_defaults(handler=infer)


def overlay_path(out: Path, image: Path, many: bool) -> Path:
    return out.with_name(f"{out.stem}-{image.stem}{out.suffix or '.png'}") if many else out


def read_bounded(path: Path, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes, so an oversized file is refused without reading it."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"more than the {limit}-byte limit")
    return data


def infer(args: argparse.Namespace) -> int:
    started = psutil.Process().create_time()
    artifact = load_artifact(args.model)
    choosing = time.time()
    backend = create_backend(artifact, args.backend, remeasure=args.remeasure)
    ready = time.time()
    limits = ImageLimits()
    pipeline = Pipeline(artifact, backend, TileOptions(args.overlap, args.downscale), limits)
    if not args.json:
        print(f"model {artifact.card.ref} on {engine_line(backend)}", file=sys.stderr)
    records: list[dict[str, Any]] = []
    many = len(args.images) > 1
    outcomes = pipeline.run_many(args.images, lambda path: read_bounded(path, limits.max_bytes))
    for path, prepared, outcome in outcomes:
        try:
            if isinstance(outcome, Exception):
                raise outcome
            if args.overlay and prepared is not None:
                overlay_path(args.overlay, path, many).write_bytes(
                    render_overlay(prepared.image, outcome)
                )
        except (ImageError, OSError) as exc:
            records.append(
                {
                    "path": str(path),
                    "ok": False,
                    "error": str(exc),
                    "error_type": type(exc).__name__,
                }
            )
            if not args.json:
                print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        records.append({"path": str(path), "ok": True, **outcome.to_dict()})
        if not args.json:
            print_summary(path, outcome)
    if args.json:
        first = pipeline.first_inferred_at
        startup = {
            "engine_s": round(ready - choosing, 3),
            "process_to_engine_ready_s": round(ready - started, 3),
            "process_to_first_tiles_s": None if first is None else round(first - started, 3),
        }
        print_json(
            {
                "model": artifact.card.ref,
                "backend": backend.describe(),
                "startup": startup,
                "results": records,
            }
        )
    return 0 if all(r["ok"] for r in records) else 1


def engine_line(backend: Backend) -> str:
    """``onnxruntime/int8 (cpu)`` plus where ``auto`` got it from: a measurement or the cache."""
    info = backend.describe()
    line = f"{info['backend']}/{info['precision']} ({info['device']})"
    choice = backend.choice
    if choice is None:
        return line
    if choice.source == "cache":
        return f"{line}; auto: the stored pick from the engine cache (--remeasure to measure again)"
    rates = ", ".join(f"{k} {v:g}" for k, v in choice.rates.items())
    return f"{line}; auto measured {rates} inputs/s and stored the pick"


def print_summary(path: Path, result: ImageResult) -> None:
    found = ", ".join(f"{lab} {result.probs[lab]:.2f}" for lab in result.labels) or "nothing"
    meta = result.meta
    where = f" at {meta.gps.latitude:.6f},{meta.gps.longitude:.6f}" if meta.gps else ""
    print(f"{path}: {found} ({meta.width}x{meta.height}, {len(result.tiles)} tiles{where})")
    for note in meta.warnings:
        print(f"{path}: warning: {note}", file=sys.stderr)
