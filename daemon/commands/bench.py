"""``spoke bench``: inference throughput of every backend here, against the naive baseline."""

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from appliance.cli import print_json
from appliance.errors import DataError
from models.artifact import Artifact, load_artifact, write_artifact
from models.bench import (
    FULL_SIZE,
    QUICK_SIZE,
    BenchPlan,
    planned_steps,
    run_bench,
    to_markdown,
)
from models.config import PRESETS, preset
from models.vit import build_model

DEFAULT_PRESET = "vit-small-p16-224"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure inference throughput on a generated drone image")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_SIZE[0]}x{QUICK_SIZE[1]} image, batches 1 and 8, short timings",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure auto's engine choice again instead of reusing the stored pick",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"random-weight model to build (default {DEFAULT_PRESET})",
    )
    source.add_argument("--model", type=Path, help="benchmark this artifact instead")
    p.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH",
        help=f"image size (default {FULL_SIZE[0]}x{FULL_SIZE[1]}, quick "
        f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]})",
    )
    p.set_defaults(handler=bench)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError("width and height must be positive")
    return w, h


def bench(args: argparse.Namespace) -> int:
    plan = (
        BenchPlan.quick(args.size or QUICK_SIZE)
        if args.quick
        else BenchPlan(size=args.size or FULL_SIZE)
    )
    with tempfile.TemporaryDirectory(prefix="spoke-bench-") as tmp:
        artifact = (
            load_artifact(args.model) if args.model else _random_artifact(args.preset, Path(tmp))
        )
        with tqdm(
            total=planned_steps(),
            desc="bench",
            unit="step",
            file=sys.stderr,
            leave=False,
            disable=not sys.stderr.isatty(),
        ) as bar:

            def progress(what: str) -> None:
                bar.set_postfix_str(what)
                bar.update(1)

            results = run_bench(artifact, plan, progress, remeasure=args.remeasure)
    if not results["rows"]:
        raise DataError("no backend could be measured")
    if args.json:
        print_json(results)
    else:
        print(to_markdown(results))
    return 0


def _random_artifact(name: str, tmp: Path) -> Artifact:
    return write_artifact(build_model(preset(name), seed=0), tmp / name, name=name, version="0.0.0")
