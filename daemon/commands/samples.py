"""``spoke samples add|import|list|remove``: labeled samples for fine-tuning, on this appliance.

Works on the state directory directly (SQLite in WAL mode, so with or without the daemon
running). Labels are checked against the active model's label set; ``--new-label`` accepts one
the model does not have yet. ``import DIR`` reads a ``labels.csv`` set (the format
``spoke-hub data generate`` writes) or, without one, class-per-folder (``DIR/<label>/*.jpg``,
``--map FOLDER=LABEL`` to rename): a bad row or a corrupt image is reported and the rest are
imported; a bad folder name or a folder of unknown label refuses the whole import before
anything is stored. The exit status says whether anything failed. Heavy modules load inside
handlers.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from appliance.cli import print_json, print_table
from appliance.errors import ConfigError, DataError
from daemon.commands.run import add_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="labeled samples for fine-tuning: add, import, list, remove")
    ssub = p.add_subparsers(dest="samples_command", required=True, metavar="ACTION")
    a = ssub.add_parser("add", help="add image(s) with their labels")
    add_state_dir(a)
    a.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    a.add_argument("--labels", required=True, help="comma-separated labels, e.g. crack,spallation")
    a.add_argument("--new-label", action="store_true",
                   help="accept labels the active model does not know (they become new classes)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=add)
    i = ssub.add_parser("import", help="import a labeled set: DIR/labels.csv, or one folder per "
                        "label (DIR/<label>/*.jpg)")
    add_state_dir(i)
    i.add_argument("directory", type=Path, metavar="DIR")
    i.add_argument("--new-label", action="store_true")
    i.add_argument("--map", action="append", default=[], metavar="FOLDER=LABEL",
                   help="class-per-folder: the label for a folder of another name (repeatable)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=import_dir)
    ls = ssub.add_parser("list", help="the samples and their labels")
    add_state_dir(ls)
    ls.add_argument("--label", help="only samples with this label")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_samples)
    r = ssub.add_parser("remove", help="remove samples by id (or a unique id prefix)")
    add_state_dir(r)
    r.add_argument("ids", nargs="+", metavar="ID")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=remove)


def _open(args: argparse.Namespace) -> tuple[Any, list[str], str | None]:
    from daemon.finetune.samples import SampleStore, active_labels

    root = args.state_dir.resolve()
    known, model = active_labels(root)
    return SampleStore(root / "finetune"), known, model


def _labels(text: str) -> list[str]:
    return [x.strip() for x in text.replace(";", ",").split(",") if x.strip()]


def _add_all(store: Any, known: list[str], items: list[tuple[Path, list[str]]],
             new_label: bool, source: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    from daemon.finetune.samples import SampleError

    added, failed = [], []
    for path, labels in items:
        try:
            data = path.read_bytes()
            got = store.add(data, labels, known, new_label=new_label, source=source)
        except OSError as exc:
            failed.append({"file": str(path), "error": f"cannot read: {exc.strerror or exc}"})
            continue
        except SampleError as exc:
            failed.append({"file": str(path), "error": str(exc)})
            continue
        added.append({"file": str(path), "id": got.sample["id"], "labels": got.sample["labels"],
                      "created": got.created, "new_labels": list(got.new_labels)})
    return added, failed


def _report(args: argparse.Namespace, added: list[dict[str, Any]],
            failed: list[dict[str, str]], model: str | None) -> int:
    if args.json:
        print_json({"added": added, "failed": failed, "model": model})
    else:
        new = sorted({n for a in added for n in a["new_labels"]})
        print(f"added {sum(a['created'] for a in added)} sample(s), relabeled "
              f"{sum(not a['created'] for a in added)}" + (f"; new label(s): {', '.join(new)}"
                                                           if new else ""))
        for f in failed:
            print(f"spoke: {f['file']}: {f['error']}", file=sys.stderr)
    return 1 if failed else 0


def add(args: argparse.Namespace) -> int:
    store, known, model = _open(args)
    try:
        labels = _labels(args.labels)
        added, failed = _add_all(store, known, [(p, labels) for p in args.images],
                                 args.new_label, "cli")
    finally:
        store.close()
    return _report(args, added, failed, model)


def read_set(directory: Path) -> tuple[list[tuple[Path, list[str]]], list[dict[str, str]]]:
    """Rows of ``labels.csv`` (file,labels with ';' between labels); bad rows reported."""
    path = directory / "labels.csv"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != ["file", "labels"]:
        raise DataError(f"{path}: the header must be 'file,labels', not {header!r}")
    items, failed = [], []
    for line, fields in enumerate(reader, start=2):
        if len(fields) != 2:
            failed.append({"file": f"{path}:{line}", "error": f"expected 2 fields, got "
                           f"{len(fields)}"})
            continue
        name, raw = fields
        if "/" in name or name.startswith("."):
            failed.append({"file": f"{path}:{line}", "error": f"bad file name {name!r}"})
            continue
        items.append((directory / name, _labels(raw)))
    return items, failed


def parse_map(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        folder, sep, label = pair.partition("=")
        if not sep or not folder.strip() or not label.strip():
            raise ConfigError(f"--map {pair!r}: give FOLDER=LABEL, e.g. salt_damage=efflorescence")
        out[folder.strip()] = label.strip()
    return out


def read_folders_checked(directory: Path, mapping: dict[str, str], store: Any,
                         known: list[str], new_label: bool) -> list[tuple[Path, list[str]]]:
    """Class-per-folder items, every folder's label checked before anything is stored."""
    from daemon.finetune.folders import read_folders
    from daemon.finetune.samples import SampleError, check_labels

    found = read_folders(directory, mapping)
    accepted = store.accepted_labels()
    for label in found.labels:
        folder = next(p.parent for p, lab in found.items if lab == label)
        try:
            check_labels([label], known, accepted, new_label)
        except SampleError as exc:
            raise type(exc)(f"{folder}: {exc}; nothing was imported") from exc
    return [(path, [label]) for path, label in found.items]


def import_dir(args: argparse.Namespace) -> int:
    mapping = parse_map(args.map)
    csv_set = (args.directory / "labels.csv").exists()
    if csv_set and mapping:
        raise ConfigError("--map renames class folders; this set has a labels.csv")
    items, bad_rows = read_set(args.directory) if csv_set else ([], [])
    store, known, model = _open(args)
    try:
        if not csv_set:
            items = read_folders_checked(args.directory, mapping, store, known, args.new_label)
        added, failed = _add_all(store, known, items, args.new_label, "import")
    finally:
        store.close()
    return _report(args, added, bad_rows + failed, model)


def list_samples(args: argparse.Namespace) -> int:
    store, known, model = _open(args)
    try:
        rows = store.rows(args.label)
        counts = store.label_counts()
        accepted = store.accepted_labels()
    finally:
        store.close()
    if args.json:
        print_json({"items": rows, "label_counts": counts, "model": model, "labels": known,
                    "new_labels": [a for a in accepted if a not in known]})
        return 0
    print_table([{"id": r["id"][:12], "labels": ",".join(r["labels"]),
                  "size": f"{r['width']}x{r['height']}", "source": r["source"]} for r in rows],
                ["id", "labels", "size", "source"])
    print(f"{len(rows)} sample(s); per label: "
          + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"))
    print(f"active model: {model or 'none'}")
    return 0


def remove(args: argparse.Namespace) -> int:
    store, _, _ = _open(args)
    removed, missing = [], []
    try:
        for sample_id in args.ids:
            row = store.find(sample_id.lower())
            if row is None:
                missing.append(sample_id)
            else:
                store.remove(row["id"])
                removed.append(row["id"])
    finally:
        store.close()
    if args.json:
        print_json({"removed": removed, "missing": missing})
    else:
        print(f"removed {len(removed)} sample(s)")
        for m in missing:
            print(f"spoke: no sample {m}", file=sys.stderr)
    return 1 if missing else 0
