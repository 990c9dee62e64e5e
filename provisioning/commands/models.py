"""``spoke-hub models init|publish|list|root``: the signed model repository.

Heavy modules (torch, onnx: artifact validation) are imported inside ``publish`` only.
"""

import argparse
import hashlib
import json
from pathlib import Path

from appliance.cli import print_json, print_table
from provisioning import repository
from provisioning.commands.common import add_home, home_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the signed model repository (TUF)")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    i = msub.add_parser("init", help="create the repository and its root keys")
    add_home(i)
    i.add_argument("--root-keys", type=int, help="root keys to create (default [repository])")
    i.add_argument("--root-threshold", type=int, help="root keys that must sign (default 1)")
    i.set_defaults(handler=init)

    pub = msub.add_parser("publish", help="validate an artifact and publish it as a target")
    add_home(pub)
    pub.add_argument("artifact", type=Path, help="artifact directory or tar")
    pub.add_argument("--json", action="store_true")
    pub.set_defaults(handler=publish)

    ls = msub.add_parser("list", help="published model versions")
    add_home(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_models)

    rot = msub.add_parser(
        "rotate-root", help="sign a new root with offline keys, rotating online keys"
    )
    add_home(rot)
    rot.add_argument("--root-key", type=Path, action="append", required=True,
                     help="an offline root key file (repeat up to the threshold)")
    rot.add_argument("--rotate", action="append", default=[],
                     choices=list(repository.ONLINE_ROLES),
                     help="give this online role a new key (repeatable)")
    rot.set_defaults(handler=rotate_root)

    r = msub.add_parser("root", help="the root metadata appliances pin (in every bundle)")
    add_home(r)
    r.add_argument("--json", action="store_true", help="the root metadata itself")
    r.set_defaults(handler=root)


def init(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config().repository
    keys = args.root_keys or config.root_keys
    threshold = args.root_threshold or min(config.root_threshold, keys)
    paths = repository.init_repository(home.repository, home.offline_keys, config, keys,
                                       threshold)
    print(f"model repository created in {home.repository}: root needs {threshold} of "
          f"{keys} keys")
    print("root keys (move them offline; the hub never needs them to publish):")
    for path in paths:
        print(f"  {path}")
    return 0


def publish(args: argparse.Namespace) -> int:
    from models.artifact import load_artifact

    home = home_of(args)
    config = home.load_config()
    artifact = load_artifact(args.artifact)  # validates hashes, card and graph
    card = artifact.card
    card_sha = hashlib.sha256((artifact.root / "card.json").read_bytes()).hexdigest()
    with repository.writable(home.repository, home.offline_keys, config.repository) as repo:
        row, added = repository.publish(repo, artifact.root, card.name, card.version, card_sha)
    if args.json:
        print_json(row | {"added": added})
    elif added:
        print(f"published {card.ref} as {row['target']} ({row['length']} bytes, "
              f"sha256 {str(row['sha256'])[:16]}...)")
    else:
        print(f"{card.ref} was already published with these bytes; nothing changed")
    return 0


def list_models(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    if not repository.exists(home.repository, config.repository):
        rows = []
    else:
        rows = repository.open_repository(home.repository, config.repository).models()
    if args.json:
        print_json(rows)
        return 0
    print_table(
        [r | {"sha256": str(r["sha256"])[:16], "size": f"{int(r['length']) / 2**20:.1f} MiB"}
         for r in rows],
        ["name", "version", "size", "sha256", "published_at"],
    )
    return 0


def root(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    repository.ensure_repository(home.repository, home.offline_keys, config.repository)
    data = repository.open_repository(home.repository, config.repository).root_bytes()
    if args.json:
        print(data.decode(), end="")
    else:
        print(json.dumps(repository.describe_root(data), indent=2))
    return 0


def rotate_root(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    version = repository.rotate_root(home.repository, config.repository, args.root_key,
                                     args.rotate)
    rotated = ", ".join(args.rotate) or "no online keys"
    print(f"root version {version} signed ({rotated} rotated); appliances follow it from the "
          "root they pinned. New bundles carry it.")
    return 0
