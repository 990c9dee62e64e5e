"""Synthetic CODEBRIM-style concrete-defect imagery: tiles, drone frames, labeled sets on disk.

No real data set can be downloaded here, so the project paints its own: a procedural
generator (numpy + Pillow) whose images are a pure function of a domain (site) seed and an
index. Typical use::

    from models.data import Domain, render_tile, tile_arrays
    sample = render_tile(Domain.from_seed(3), index=0, size=112)   # .image, .labels, .boxes
    images, targets = tile_arrays([1, 2, 3], per_domain=500, size=112)
"""

from models.data.dataset import (
    BOXES_JSON,
    LABELS_CSV,
    LabeledImage,
    iter_tiles,
    read_labels,
    tile_arrays,
    write_frames,
    write_tiles,
)
from models.data.domain import Domain
from models.data.labels import BACKGROUND, DEFECTS, LABELS
from models.data.render import Sample, render_frame, render_tile

__all__ = [
    "BACKGROUND",
    "BOXES_JSON",
    "DEFECTS",
    "LABELS",
    "LABELS_CSV",
    "Domain",
    "LabeledImage",
    "Sample",
    "iter_tiles",
    "read_labels",
    "render_frame",
    "render_tile",
    "tile_arrays",
    "write_frames",
    "write_tiles",
]
