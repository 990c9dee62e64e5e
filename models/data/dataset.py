"""Labeled sets on disk, and in-memory arrays for training.

A set is a directory of images plus ``labels.csv``::

    file,labels
    tile_000000.png,crack;efflorescence
    tile_000001.png,background

one row per image, labels separated by ``;`` (``background`` alone for no defect), names from
``models.data.labels.LABELS``. Frame sets add ``boxes.json``: per file, its size, capture
metadata and ``{"label", "box": [x0, y0, x1, y1]}`` ground-truth boxes in pixels (x1, y1
exclusive). ``manifest.json`` records how the set was generated, so it can be made again.
``labels.csv`` is written last and atomically: a set without one is incomplete.
"""

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from appliance.errors import DataError
from appliance.fsutil import atomic_write
from models.data.domain import Domain
from models.data.exif import capture_info, make_exif
from models.data.labels import BACKGROUND, LABELS, multi_hot
from models.data.render import render_frame, render_tile
from models.progress import progress_bar

LABELS_CSV = "labels.csv"
BOXES_JSON = "boxes.json"
MANIFEST_JSON = "manifest.json"
GENERATOR_VERSION = 2
LABEL_SEPARATOR = ";"


@dataclass(frozen=True)
class LabeledImage:
    file: str
    labels: frozenset[str]


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)


def _labels_csv(rows: Sequence[LabeledImage]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "labels"])
    for row in rows:
        writer.writerow([row.file, LABEL_SEPARATOR.join(n for n in LABELS if n in row.labels)])
    return buf.getvalue()


def _manifest(kind: str, domain: int, count: int, **extra: Any) -> str:
    data = {
        "generator": "models.data",
        "generator_version": GENERATOR_VERSION,
        "kind": kind,
        "domain_seed": domain,
        "count": count,
        "labels": list(LABELS),
        **extra,
    }
    return json.dumps(data, indent=2) + "\n"


def write_tiles(
    out: Path, domain: int, count: int, size: int = 224, progress: bool = False
) -> list[LabeledImage]:
    """Generate ``count`` PNG tiles of domain ``domain`` into the new directory ``out``."""
    _prepare(out)
    dom = Domain.from_seed(domain)
    rows = []
    for i in progress_bar(
        iterable=range(count), desc=f"tiles (domain {domain})", unit="tile", enabled=progress
    ):
        sample = render_tile(dom, i, size)
        name = f"tile_{i:06d}.png"
        Image.fromarray(sample.image).save(out / name)
        rows.append(LabeledImage(name, sample.labels))
    atomic_write(out / MANIFEST_JSON, _manifest("tiles", domain, count, size=size))
    atomic_write(out / LABELS_CSV, _labels_csv(rows))
    return rows


def write_frames(
    out: Path,
    domain: int,
    count: int,
    width: int = 4000,
    height: int = 3000,
    progress: bool = False,
    first: int = 0,
) -> list[LabeledImage]:
    """Generate ``count`` JPEG drone frames with EXIF GPS and ground-truth boxes into ``out``:
    frames ``first`` to ``first + count - 1`` of the site, each the same as in any other set
    of the site that holds it (so a survey's frames and a later flight's never overlap)."""
    if first < 0:
        raise ValueError(f"first frame {first}: must be 0 or more")
    _prepare(out)
    dom = Domain.from_seed(domain)
    rows, boxes = [], {}
    for i in progress_bar(
        iterable=range(first, first + count), desc=f"frames (domain {domain})", unit="frame",
        enabled=progress,
    ):
        sample = render_frame(dom, i, width, height)
        info = capture_info(dom, i)
        name = f"frame_{i:05d}.jpg"
        Image.fromarray(sample.image).save(out / name, quality=92, exif=make_exif(info))
        rows.append(LabeledImage(name, sample.labels))
        boxes[name] = {
            "width": width,
            "height": height,
            "latitude": info.latitude,
            "longitude": info.longitude,
            "altitude_m": info.altitude_m,
            "time": info.time.isoformat(),
            "boxes": [{"label": b[0], "box": list(b[1:])} for b in sample.boxes],
        }
    atomic_write(out / BOXES_JSON, _one_file_per_line(boxes))
    manifest = _manifest("frames", domain, count, width=width, height=height, first=first)
    atomic_write(out / MANIFEST_JSON, manifest)
    atomic_write(out / LABELS_CSV, _labels_csv(rows))
    return rows


def _one_file_per_line(data: dict[str, Any]) -> str:
    """JSON that stays readable and diffable: one line per file."""
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_labels(directory: Path, label_set: Sequence[str] = LABELS) -> list[LabeledImage]:
    """Parse and check a set's ``labels.csv``: known labels, existing files, background alone."""
    path = Path(directory) / LABELS_CSV
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != ["file", "labels"]:
        raise DataError(f"{path}: the header must be 'file,labels', not {header!r}")
    rows = []
    for line, fields in enumerate(reader, start=2):
        if len(fields) != 2:
            raise DataError(f"{path}:{line}: expected 2 fields, got {len(fields)}")
        name, raw = fields
        labels = frozenset(x.strip() for x in raw.split(LABEL_SEPARATOR) if x.strip())
        unknown = sorted(labels - set(label_set))
        if unknown:
            raise DataError(f"{path}:{line}: unknown labels {', '.join(unknown)}")
        if not labels or (BACKGROUND in labels and len(labels) > 1):
            raise DataError(f"{path}:{line}: needs one or more defects, or 'background' alone")
        if "/" in name or name.startswith(".") or not (path.parent / name).is_file():
            raise DataError(f"{path}:{line}: no image file {name!r} in {path.parent}")
        rows.append(LabeledImage(name, labels))
    return rows


def iter_tiles(
    domain: int, start: int, count: int, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tiles ``start .. start+count`` of a domain as (uint8 image, float32 multi-hot) pairs."""
    dom = Domain.from_seed(domain)
    for i in range(start, start + count):
        sample = render_tile(dom, i, size)
        yield sample.image, np.asarray(multi_hot(sample.labels), dtype=np.float32)


def tile_arrays(
    domains: Sequence[int], per_domain: int, size: int, start: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images and (N, 6) targets, domain after domain."""
    n = len(domains) * per_domain
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    targets = np.empty((n, len(LABELS)), dtype=np.float32)
    bar = progress_bar(total=n, desc=f"generating {size}px tiles", unit="tile", enabled=progress)
    k = 0
    for d in domains:
        for image, target in iter_tiles(d, start, per_domain, size):
            images[k], targets[k] = image, target
            k += 1
            bar.update()
    bar.close()
    return images, targets
