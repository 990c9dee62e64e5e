"""``spoke-hub pretrain`` and ``spoke-hub evaluate``: the foundation model at the hub."""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from appliance.errors import DataError
from models.training import distributed
from models.training.evaluate import EvalConfig, evaluate, report, rows_json
from models.training.pretrain import HEADS, METHODS, PRESET_NAMES, PretrainConfig, pretrain
from provisioning.commands.common import parse_duration

REPORT_MARKER = "<!-- evaluate: generated below this line -->"


def _add_pretrain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESET_NAMES, default="vit-tiny-p16-112")
    p.add_argument("--img-size", type=int, help="input size in pixels (default: the preset's)")
    p.add_argument("--domains", default="1,2,3,4,5,6", help="generated sites to train on")
    p.add_argument("--tiles-per-domain", type=int, default=800)
    p.add_argument("--steps", type=int, help="step budget")
    p.add_argument("--budget", help="time budget, e.g. 90s, 10m (with --steps: whichever first)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--mask-ratio", type=float, default=0.75, help="MAE: share of patches hidden")
    p.add_argument(
        "--target-blur",
        type=int,
        default=0,
        help="MAE: reconstruct a KxK box-blurred image (drops unpredictable noise); 0: off",
    )
    p.add_argument(
        "--patch-keep",
        type=float,
        default=1.0,
        help="supervised: share of patches each training image keeps (PatchDropout); 1: all",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: measure both and keep the faster",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: measure 1 and all)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train a foundation model on generated imagery")
    _add_pretrain_options(p)
    p.add_argument(
        "--method",
        choices=METHODS,
        default="mae",
        help="mae (images only), supervised (generated labels), or mae then supervised",
    )
    p.add_argument(
        "--mae-share", type=float, default=0.5, help="mae+supervised: share of the budget for MAE"
    )
    p.add_argument(
        "--head",
        choices=HEADS,
        default="fresh",
        help="trained: keep the supervised head and calibrate its thresholds",
    )
    p.add_argument("--out", type=Path, required=True, help="the model artifact directory")
    p.add_argument("--checkpoint", type=Path, help="resume file (default: OUT.ckpt)")
    p.add_argument("--checkpoint-every", default="60s", help="checkpoint interval (default 60s)")
    p.add_argument("--checkpoint-every-steps", type=int, help="also checkpoint every N steps")
    p.add_argument("--name", help="model name (default spoke-foundation-METHOD)")
    p.add_argument("--version", default="0.1.0")
    p.set_defaults(handler=run_pretrain)

    e = sub.add_parser("evaluate", help="compare MAE, supervised and scratch on a held-out site")
    _add_pretrain_options(e)
    e.add_argument("--target-domain", type=int, default=1000, help="the held-out site")
    e.add_argument("--starts", default="ssl,supervised,scratch", help="starting points to compare")
    e.add_argument("--shots", default="10,30,100,300", help="labeled tiles per class")
    e.add_argument("--pool", type=int, default=2500, help="tiles of the site to label from")
    e.add_argument("--test", type=int, default=600, help="test tiles of the site")
    e.add_argument("--finetune-steps", type=int, default=150)
    e.add_argument("--finetune-batch", type=int, default=32)
    e.add_argument(
        "--work",
        type=Path,
        required=True,
        help="where pre-trained models and checkpoints go (reused when present)",
    )
    e.add_argument("--ssl-model", type=Path, help="use this MAE artifact instead of training")
    e.add_argument(
        "--supervised-model", type=Path, help="use this supervised artifact instead of training"
    )
    e.add_argument("--report", type=Path, help="Markdown file to write the table into")
    e.add_argument("--json", action="store_true", help="print the rows as JSON")
    e.set_defaults(handler=run_evaluate)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DataError(f"{what}: expected comma-separated integers, not {text!r}") from None
    if not values:
        raise DataError(f"{what}: at least one value is needed")
    return values


def _config(args: argparse.Namespace, method: str) -> PretrainConfig:
    if args.steps is None and args.budget is None:
        raise DataError("give a budget: --steps N and/or --budget DURATION")
    return PretrainConfig(
        method=method,
        preset=args.preset,
        img_size=args.img_size,
        domains=_ints(args.domains, "--domains"),
        tiles_per_domain=args.tiles_per_domain,
        steps=args.steps,
        seconds=parse_duration(args.budget) if args.budget else None,
        batch_size=args.batch_size,
        lr=args.lr,
        mask_ratio=args.mask_ratio,
        target_blur=args.target_blur,
        patch_keep=args.patch_keep,
        seed=args.seed,
        precision=args.precision,
        threads=args.threads,
    )


def run_pretrain(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(_config(args, args.method), mae_share=args.mae_share, head=args.head)
    distributed.init_from_env()
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    pretrain(
        cfg,
        args.out,
        checkpoint=checkpoint,
        name=args.name,
        version=args.version,
        checkpoint_every_s=parse_duration(args.checkpoint_every),
        checkpoint_every_steps=args.checkpoint_every_steps,
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        _config(args, "mae"),
        target_domain=args.target_domain,
        pool_size=args.pool,
        test_size=args.test,
        shots=_ints(args.shots, "--shots"),
        starts=tuple(s.strip() for s in args.starts.split(",") if s.strip()),
        finetune_steps=args.finetune_steps,
        finetune_batch=args.finetune_batch,
    )
    if args.target_domain in cfg.pretrain.domains:
        raise DataError(f"--target-domain {args.target_domain} is one of the training domains")
    reuse = {
        k: v
        for k, v in (("ssl", args.ssl_model), ("supervised", args.supervised_model))
        if v is not None
    }
    start = time.perf_counter()
    rows = evaluate(cfg, args.work, reuse)
    command = (
        "spoke-hub " + shlex.join(sys.argv[1:])
        if sys.argv[1:2] == ["evaluate"]
        else "spoke-hub evaluate ..."
    )
    text = report(cfg, rows, command, time.perf_counter() - start)
    if args.report:
        _write_report(args.report, text)
        print(f"evaluate: wrote the table to {args.report}")
    if args.json:
        print(json.dumps(rows_json(rows), indent=2))
    else:
        print(text)
    return 0


def _write_report(path: Path, text: str) -> None:
    """Replace what follows the marker, keeping the hand-written part above it."""
    old = path.read_text() if path.exists() else f"# Foundation model\n\n{REPORT_MARKER}\n"
    head = old.split(REPORT_MARKER)[0] if REPORT_MARKER in old else old.rstrip() + "\n\n"
    path.write_text(f"{head}{REPORT_MARKER}\n\n{text}")
