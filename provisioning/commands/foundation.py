"""``spoke-hub foundation build``: the hub's default foundation model, built or reused.

The model is a pure function of the seed and the budget: it is built once into
``$XDG_CACHE_HOME/spoke/foundation/`` and copied from there to ``--out``. Under ``torchrun``
the build is data-parallel (see ``models.training.distributed``) and rank 0 writes.
"""

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

from appliance.cli import print_json
from appliance.errors import DataError
from models.artifact import load_artifact
from models.training import distributed
from models.training.foundation import DEFAULT_CONFIG, RECIPES, build_foundation_model
from models.training.pretrain import PretrainConfig
from provisioning.commands.common import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("foundation", help="the hub's default foundation model")
    fsub = p.add_subparsers(dest="foundation_command", required=True, metavar="ACTION")
    b = fsub.add_parser(
        "build", help="build the default foundation model (or reuse the cached one)"
    )
    b.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    b.add_argument("--seed", type=int, default=0, help="the same seed gives the same weights")
    b.add_argument(
        "--budget",
        help=f"STEPS (reproducible) or a duration such as 20m (not reproducible); "
        f"default {DEFAULT_CONFIG.steps} steps",
    )
    b.add_argument(
        "--recipe",
        choices=RECIPES,
        default="default",
        help="default: the hub's model; tiny: a seconds-long build for tests",
    )
    b.add_argument("--cache", type=Path, help="cache root (default $XDG_CACHE_HOME/spoke)")
    b.add_argument("--json", action="store_true", help="print the model card's metrics as JSON")
    b.set_defaults(handler=build)


def budget_config(recipe: PretrainConfig, text: str | None) -> PretrainConfig:
    """``recipe`` with ``--budget`` applied: a step count or a duration."""
    if text is None:
        return recipe
    if text.strip().isdigit():
        return dataclasses.replace(recipe, steps=int(text), seconds=None)
    return dataclasses.replace(recipe, steps=None, seconds=parse_duration(text))


def copy_artifact(src: Path, out: Path) -> None:
    """Copy the cached artifact to ``out`` (new or empty) all at once: a temp copy, renamed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(src, work, dirs_exist_ok=True)
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def build(args: argparse.Namespace) -> int:
    cfg = budget_config(RECIPES[args.recipe], args.budget)
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty directory; choose another --out")
    shard = distributed.init_from_env()
    path = build_foundation_model(args.seed, cfg, args.cache, log=print if shard.main else _quiet)
    if not shard.main:
        return 0
    copy_artifact(path, out)
    card = load_artifact(out).card
    if args.json:
        print_json(
            {
                "path": str(out),
                "cached": str(path),
                "name": card.name,
                "thresholds": card.thresholds,
                "metrics": card.metrics,
            }
        )
    else:
        m = card.metrics
        print(
            f"{out}: {card.name} {card.version}, {card.config.img_size}px, "
            f"{m['pretrain.mae_steps']:.0f} MAE + {m['pretrain.supervised_steps']:.0f} supervised "
            f"steps, calibrated macro-F1 {m.get('calibration.macro_f1', float('nan')):.3f} "
            f"on generated site {m.get('calibration.domain', float('nan')):.0f}"
        )
    return 0


def _quiet(_: str) -> None:
    pass
