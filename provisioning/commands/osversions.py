"""``spoke-hub os publish|list``: OS versions in the signed repository (provisioning/osupdates)."""

import argparse
from pathlib import Path

from appliance.cli import print_json, print_table
from provisioning import osupdates, repository
from provisioning.commands.common import add_home, home_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("os", help="OS versions for over-the-air updates (signed like models)")
    osub = p.add_subparsers(dest="os_command", required=True, metavar="ACTION")

    pub = osub.add_parser("publish", help="check an OS version's artefacts and publish them")
    add_home(pub)
    pub.add_argument("dir", type=Path,
                     help="directory with manifest.json, SHA256SUMS, the UKI and root image")
    pub.add_argument("--json", action="store_true")
    pub.set_defaults(handler=publish)

    ls = osub.add_parser("list", help="published OS versions")
    add_home(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_versions)


def publish(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    with repository.writable(home.repository, home.offline_keys, config.repository) as repo:
        row = osupdates.publish(repo, args.dir)
    if args.json:
        print_json(row)
    else:
        size = sum(int(f["length"]) for f in row["files"]) / 2**20
        print(f"published OS {row['version']} ({row['architecture']}, {len(row['files'])} "
              f"files, {size:.1f} MiB) as {row['target']}")
    return 0


def list_versions(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = home.load_config()
    rows = []
    if repository.exists(home.repository, config.repository):
        rows = osupdates.os_versions(repository.open_repository(home.repository,
                                                                config.repository))
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["version", "architecture", "target", "published_at"])
    return 0
