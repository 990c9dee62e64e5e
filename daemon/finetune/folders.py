"""Class-per-folder image sets (``DIR/<label>/*.jpg``), the way most labeled sets are shared.

``read_folders`` lists a set with precise refusals (a folder name that is not a label name, a
folder with no images); ``split_per_class`` takes ``n`` images per class for training and
holds out the rest, by sorted file name and a seeded permutation, so a benchmark's split is
reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.errors import DataError
from daemon.finetune.samples import LABEL_NAME

#: The image files a class folder may hold.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderSet:
    items: tuple[tuple[Path, str], ...]  # (image, its folder's label)
    labels: tuple[str, ...]

    def count(self, label: str) -> int:
        return sum(1 for _, lab in self.items if lab == label)


def read_folders(directory: Path, mapping: dict[str, str] | None = None) -> FolderSet:
    """Every image under ``directory/<label>/``; ``mapping`` renames folders to labels
    (``salt_damage`` -> ``efflorescence``). Raises ``DataError`` naming the bad folder."""
    mapping = mapping or {}
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory}: no class folders (expected {directory}/<label>/*.jpg)")
    items: list[tuple[Path, str]] = []
    for folder in folders:
        label = mapping.get(folder.name, folder.name)
        if not LABEL_NAME.match(label):
            raise DataError(
                f"{folder}: folder name {folder.name!r} is not a label name (lower-case "
                "letters, digits, space, _ or -, at most 64); rename the folder")
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        items.extend((f, label) for f in files)
    return FolderSet(tuple(items), tuple(dict.fromkeys(lab for _, lab in items)))


def split_per_class(found: FolderSet, per_class: int, seed: int
                    ) -> tuple[FolderSet, FolderSet]:
    """(``per_class`` images of each label, the rest), by file name and seed."""
    train: list[tuple[Path, str]] = []
    rest: list[tuple[Path, str]] = []
    rng = np.random.default_rng(seed)
    for label in found.labels:
        files = sorted(p for p, lab in found.items if lab == label)
        if len(files) <= per_class:
            raise DataError(f"label {label!r} has {len(files)} images; {per_class} for "
                            "training and at least one held out are needed")
        order = rng.permutation(len(files))
        train.extend((files[i], label) for i in order[:per_class])
        rest.extend((files[i], label) for i in order[per_class:])
    return FolderSet(tuple(train), found.labels), FolderSet(tuple(rest), found.labels)
