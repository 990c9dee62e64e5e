"""Labeled samples for fine-tuning: rows in SQLite (WAL), image files on disk.

Layout under ``STATE/finetune/``: ``finetune.db`` (tables ``samples``, ``labels``, ``jobs``)
and ``samples/<first two hex>/<sha256>.<ext>``. A sample's id is the sha256 of its stored bytes;
adding the same image again relabels it. The file is written atomically before its row, so a
crash never leaves a row without its image. The daemon (API) and ``spoke samples`` both write
here; SQLite's locking keeps them apart.

Labels are checked against the active model's label set plus the labels someone accepted
explicitly (``--new-label`` / ``"new_label": true``): a typo never silently becomes a class.
Images are decoded (bounded) before anything is stored: a corrupt one is refused with the
decoder's reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import DataError
from appliance.fsutil import atomic_write
from appliance.store import connect

LABEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_ -]{0,63}$")
BACKGROUND = "background"
MAX_SAMPLE_BYTES = 16 * 1024 * 1024
MAX_SAMPLE_PIXELS = 25_000_000
FORMATS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    labels TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL,
    origin TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    name TEXT PRIMARY KEY,
    added_at REAL NOT NULL
);
"""


class SampleError(DataError):
    """A sample was refused; ``code`` names the rule (for the API's JSON errors)."""

    code = "bad_sample"


class CorruptSample(SampleError):
    code = "corrupt_image"


class UnknownLabels(SampleError):
    code = "unknown_labels"


@dataclass(frozen=True)
class Added:
    sample: dict[str, Any]
    created: bool
    new_labels: tuple[str, ...] = ()


def check_labels(labels: Iterable[str], known: Sequence[str], accepted: Sequence[str],
                 new_label: bool) -> tuple[list[str], list[str]]:
    """(labels, the ones that are new); raises for bad names, mixes and unknown labels."""
    names = sorted({str(x).strip() for x in labels if str(x).strip()})
    if not names:
        raise SampleError("a sample needs at least one label ('background' for no defect)")
    bad = [n for n in names if not LABEL_NAME.match(n)]
    if bad:
        raise SampleError(f"invalid label name(s) {', '.join(map(repr, bad))}: lower-case "
                          "letters, digits, space, _ or -, at most 64")
    if BACKGROUND in names and len(names) > 1:
        raise SampleError("'background' means no defect: it cannot go with other labels")
    unknown = [n for n in names if n not in known and n not in accepted]
    if unknown and not new_label:
        have = ", ".join(list(known) + [a for a in accepted if a not in known]) or "none"
        raise UnknownLabels(
            f"unknown label(s) {', '.join(unknown)}; the active model knows: {have}. "
            "Pass --new-label (API: \"new_label\": true) to add a label the model does not "
            "have yet")
    return names, unknown


def decode_sample(data: bytes) -> tuple[int, int, str]:
    """(width, height, file extension) of a valid image, else ``CorruptSample``."""
    from models.errors import ImageError
    from models.images import ImageLimits, decode_image

    try:
        image = decode_image(data, ImageLimits(MAX_SAMPLE_BYTES, MAX_SAMPLE_PIXELS))
    except ImageError as exc:
        raise CorruptSample(f"the image is unusable: {exc}") from exc
    ext = FORMATS.get(image.meta.format.upper(), "img")
    return image.meta.width, image.meta.height, ext


def crop_png(data: bytes, box: Sequence[int]) -> bytes:
    """The ``[x0, y0, x1, y1]`` box (pixels, x1/y1 exclusive) of an image, as PNG."""
    from PIL import Image

    from models.images import decode_image

    image = decode_image(data)
    h, w = image.pixels.shape[:2]
    if len(box) != 4:
        raise SampleError("box must be [x0, y0, x1, y1]")
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise SampleError("box must be four integers [x0, y0, x1, y1]") from exc
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise SampleError(f"box {list(box)} is not inside the {w}x{h} image")
    out = io.BytesIO()
    Image.fromarray(image.pixels[y0:y1, x0:x1]).save(out, "PNG")
    return out.getvalue()


class SampleStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "samples"
        self.files.mkdir(parents=True, exist_ok=True)
        self.db: sqlite3.Connection = connect(root / "finetune.db")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- labels --------------------------------------------------------------------------

    def accepted_labels(self) -> list[str]:
        return [r["name"] for r in self.db.execute("SELECT name FROM labels ORDER BY added_at")]

    # -- samples -------------------------------------------------------------------------

    def add(self, data: bytes, labels: Iterable[str], known: Sequence[str], *,
            new_label: bool = False, source: str = "api",
            origin: dict[str, Any] | None = None) -> Added:
        names, new = check_labels(labels, known, self.accepted_labels(), new_label)
        if len(data) > MAX_SAMPLE_BYTES:
            raise SampleError(f"{len(data)} bytes is more than the {MAX_SAMPLE_BYTES}-byte "
                              "sample limit")
        width, height, ext = decode_sample(data)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{sha[:2]}/{sha}.{ext}"
        path = self.files / rel
        if not path.exists():
            atomic_write(path, data, mode=0o640)
        now = time.time()
        with self.db:
            for name in new:
                self.db.execute("INSERT OR IGNORE INTO labels (name, added_at) VALUES (?, ?)",
                                (name, now))
            existing = self.get(sha)
            if existing is not None:
                self.db.execute("UPDATE samples SET labels = ? WHERE id = ?",
                                (json.dumps(names), sha))
            else:
                seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM samples"
                                      ).fetchone()[0]
                self.db.execute(
                    "INSERT INTO samples (id, seq, labels, path, bytes, width, height, source, "
                    "origin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sha, seq, json.dumps(names), rel, len(data), width, height, source,
                     json.dumps(origin) if origin else None, now))
        got = self.get(sha)
        assert got is not None
        return Added(got, existing is None, tuple(new))

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["labels"] = json.loads(out["labels"])
        out["origin"] = json.loads(out["origin"]) if out["origin"] else None
        return out

    def get(self, sample_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return self._row(row) if row else None

    def find(self, prefix: str) -> dict[str, Any] | None:
        """A sample by id or unique id prefix (at least 6 hex digits)."""
        if not re.fullmatch(r"[0-9a-f]{6,64}", prefix):
            raise SampleError("a sample id is 6 to 64 hex digits")
        rows = self.db.execute("SELECT * FROM samples WHERE id LIKE ?", (prefix + "%",)
                               ).fetchall()
        if len(rows) > 1:
            raise SampleError(f"{prefix} matches {len(rows)} samples; give more digits")
        return self._row(rows[0]) if rows else None

    def rows(self, label: str | None = None) -> list[dict[str, Any]]:
        rows = [self._row(r) for r in self.db.execute("SELECT * FROM samples ORDER BY seq")]
        if label is not None:
            rows = [r for r in rows if label in r["labels"]]
        return rows

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows():
            for name in row["labels"]:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def remove(self, sample_id: str) -> bool:
        row = self.get(sample_id)
        if row is None:
            return False
        with self.db:
            self.db.execute("DELETE FROM samples WHERE id = ?", (sample_id,))
        (self.files / row["path"]).unlink(missing_ok=True)
        return True

    def path(self, row: dict[str, Any]) -> Path:
        return self.files / row["path"]


def label_targets(rows: Sequence[dict[str, Any]], known: Sequence[str], accepted: Sequence[str],
                  model_ref: str) -> tuple[list[str], Any]:
    """The job's label set (the model's labels, then each accepted new one in the order samples
    use it) and the (samples, labels) 0/1 target matrix. Raises ``UnknownLabels`` for a label
    neither the model ``model_ref`` knows nor was accepted with ``--new-label``."""
    import numpy as np

    labels = list(known)
    for row in rows:
        for name in row["labels"]:
            if name not in labels:
                if name not in accepted:
                    raise UnknownLabels(
                        f"sample {row['id'][:12]} has label {name!r}, which the active model "
                        f"{model_ref} does not know; relabel it or add it with --new-label")
                labels.append(name)
    targets = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for i, row in enumerate(rows):
        for name in row["labels"]:
            targets[i, labels.index(name)] = 1.0
    return labels, targets


def job_split(rows: Sequence[dict[str, Any]], known: Sequence[str], accepted: Sequence[str],
              model_ref: str, held_out_fraction: float, seed: int) -> tuple[list[str], Any, Any]:
    """What a job's plan checks before it is queued (the daemon's ``FinetuneService.plan`` and
    ``spoke finetune start`` alike): every label known or accepted, and a stratified split
    that holds some samples out. The label set, then the train and held-out indices."""
    from models.finetune.split import stratified_split

    labels, targets = label_targets(rows, known, accepted, model_ref)
    train, held = stratified_split(targets, labels, held_out_fraction, seed)
    return labels, train, held


def active_labels(state_root: Path) -> tuple[list[str], str | None]:
    """The active model's labels and ``name@version`` as the files say (for the CLI, which may
    run without the daemon): the model store's ``current`` card, else what the daemon last
    recorded for a ``--model`` it serves."""
    for card in (state_root / "models" / "current" / "card.json",
                 state_root / "finetune" / "active-model.json"):
        try:
            data = json.loads(card.read_text())
            return [str(x) for x in data["labels"]], f"{data['name']}@{data['version']}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [], None
