"""What the review grid shows: every tile of the newest processed images, with the model's
labels and scores, whether someone has labeled it yet, and how unsure the model was.

A tile is *uncertain* when some label's probability lies within ``band`` of that label's
threshold: the model nearly decided the other way, so a person's label teaches it most.
Those come first by default. A tile counts as *reviewed* once a sample was made from exactly
its box (``POST /v1/samples`` with ``image_id`` and ``box`` records that origin).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

BACKGROUND = "background"
DEFAULT_BAND = 0.15
Band = Literal["all", "uncertain", "confident"]
Order = Literal["uncertain", "newest"]
BANDS: tuple[Band, ...] = ("all", "uncertain", "confident")
ORDERS: tuple[Order, ...] = ("uncertain", "newest")


@dataclass(frozen=True)
class Filters:
    label: str | None = None
    band: Band = "all"
    unreviewed: bool = False
    order: Order = "uncertain"


@dataclass(frozen=True)
class Tile:
    key: str
    image_id: str
    box: tuple[int, int, int, int]
    probs: dict[str, float]
    labels: list[str]  # what the model says (at or over threshold); [] is "no defect"
    margin: float  # the smallest |probability - threshold| over the labels
    uncertain: bool
    reviewed: list[str] | None  # the sample's labels, None while unlabeled
    sample_id: str | None
    newest: int  # 0 for the newest image

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tile_key(image_id: str, box: Iterable[int]) -> str:
    return f"{image_id}:{','.join(str(int(v)) for v in box)}"


def reviewed_by_origin(samples: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Samples cut from uploaded images, by the tile key of their origin."""
    out: dict[str, Mapping[str, Any]] = {}
    for sample in samples:
        origin = sample.get("origin") or {}
        if origin.get("image_id") and origin.get("box"):
            out[tile_key(origin["image_id"], origin["box"])] = sample
    return out


def tiles_of(images: list[dict[str, Any]], thresholds: Mapping[str, float],
             samples: Mapping[str, Mapping[str, Any]], band: float = DEFAULT_BAND
             ) -> list[Tile]:
    out = []
    for rank, image in enumerate(images):
        for tile in image.get("tiles") or []:
            probs = {k: round(float(v), 4) for k, v in (tile.get("probs") or {}).items()}
            found = [lab for lab, p in probs.items() if p >= thresholds.get(lab, 0.5)
                     and lab != BACKGROUND]
            margin = min((abs(p - thresholds.get(lab, 0.5)) for lab, p in probs.items()),
                         default=1.0)
            box = tuple(int(v) for v in tile["box"])
            key = tile_key(image["id"], box)
            sample = samples.get(key)
            out.append(Tile(key, image["id"], box,  # type: ignore[arg-type]
                            probs, found, round(margin, 4), margin < band,
                            list(sample["labels"]) if sample else None,
                            str(sample["id"]) if sample else None, rank))
    return out


def select(tiles: list[Tile], filters: Filters) -> list[Tile]:
    chosen = [t for t in tiles
              if (filters.band == "all" or t.uncertain == (filters.band == "uncertain"))
              and (not filters.unreviewed or t.reviewed is None)
              and (filters.label is None or filters.label in t.labels
                   or filters.label in (t.reviewed or []))]
    if filters.order == "uncertain":
        return sorted(chosen, key=lambda t: (not t.uncertain, t.margin, t.newest))
    return sorted(chosen, key=lambda t: (t.newest, t.box[1], t.box[0]))


def parse_filters(query: Mapping[str, str]) -> Filters:
    """Filters from a query string; ``ValueError`` names a bad value."""
    band = query.get("band", "all")
    order = query.get("order", "uncertain")
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}")
    return Filters(label=query.get("label") or None, band=band,
                   unreviewed=query.get("unreviewed") in ("1", "true"), order=order)
