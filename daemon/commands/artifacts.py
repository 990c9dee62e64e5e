"""``spoke models create`` and ``spoke models show``: make and inspect model artifacts.

Registered by ``daemon.commands.models`` beside the store actions, so one noun covers models
on disk and in the store; the ML stack is imported only when one of these two runs.
"""

import argparse
import json
from pathlib import Path

from appliance.cli import print_json


def add_parsers(msub: argparse._SubParsersAction) -> None:
    from models.config import CODEBRIM_LABELS, PRESETS

    c = msub.add_parser("create", help="write a randomly initialised model artifact")
    c.add_argument("--preset", required=True, choices=sorted(PRESETS), help="architecture")
    c.add_argument(
        "--labels",
        nargs="+",
        default=list(CODEBRIM_LABELS),
        help="label set (default: CODEBRIM's six)",
    )
    c.add_argument("--name", help="model name (default: the preset)")
    c.add_argument("--version", default="0.1.0", help="semantic version (default 0.1.0)")
    c.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    c.add_argument("--out", type=Path, required=True, help="new artifact directory")
    c.set_defaults(handler=create)

    s = msub.add_parser("show", help="validate an artifact and print its card")
    s.add_argument("path", type=Path, help="artifact directory or tar")
    s.add_argument("--json", action="store_true", help="print the whole card as JSON")
    s.set_defaults(handler=show)


def create(args: argparse.Namespace) -> int:
    from models.artifact import write_artifact
    from models.config import preset
    from models.vit import build_model

    cfg = preset(args.preset, num_classes=len(args.labels))
    artifact = write_artifact(
        build_model(cfg, seed=args.seed),
        args.out,
        name=args.name or args.preset,
        version=args.version,
        labels=args.labels,
    )
    print(f"wrote {artifact.card.ref} ({args.preset}, {len(args.labels)} labels) to {args.out}")
    return 0


def show(args: argparse.Namespace) -> int:
    from models.artifact import load_artifact

    artifact = load_artifact(args.path)
    card = artifact.card
    if args.json:
        print_json(card.to_dict())
        return 0
    cfg = card.config
    print(
        f"{card.ref}: ViT p{cfg.patch_size} {cfg.img_size}px dim {cfg.embed_dim} "
        f"depth {cfg.depth}, parent {card.parent or '-'}"
    )
    print(f"labels: {', '.join(f'{lab}>={card.thresholds[lab]:g}' for lab in card.labels)}")
    if card.metrics:
        print(f"metrics: {json.dumps(card.metrics, sort_keys=True)}")
    print("files: verified (sha256), graph matches the card")
    return 0
