"""Whole images: multi-label tiles and full drone frames with ground-truth boxes.

An image is a pure function of ``(domain seed, kind, index, size)``: each one gets its own
random stream, so any image can be made alone, in any order, in any process.
"""

from dataclasses import dataclass

import numpy as np

from models.data.defects import PAINTERS, Box
from models.data.domain import REFERENCE_TILE, Domain
from models.data.labels import BACKGROUND, DEFECTS
from models.data.noise import to_uint8
from models.data.surface import apply_camera, camera_artefacts, new_scene, paint_surface

TILE_STREAM, FRAME_STREAM = 1, 2
# How often each defect is drawn in a defect tile: roughly CODEBRIM's balance.
DEFECT_RATE = {
    "crack": 0.45,
    "spallation": 0.3,
    "efflorescence": 0.3,
    "exposed_bars": 0.22,
    "corrosion_stain": 0.35,
}
BACKGROUND_RATE = 0.25
# Paint order: pockets first, then lines on them, then run-off over everything.
PAINT_ORDER = ("spallation", "exposed_bars", "crack", "corrosion_stain", "efflorescence")


@dataclass(frozen=True)
class Sample:
    """A generated image, its labels and the boxes of what was painted (image pixels)."""

    image: np.ndarray  # H x W x 3 uint8
    labels: frozenset[str]
    boxes: tuple[Box, ...]


def _choose_defects(rng: np.random.Generator) -> list[str]:
    if rng.random() < BACKGROUND_RATE:
        return []
    chosen = [name for name in DEFECTS if rng.random() < DEFECT_RATE[name]]
    if "exposed_bars" in chosen and "corrosion_stain" not in chosen and rng.random() < 0.5:
        chosen.append("corrosion_stain")  # exposed steel usually bleeds rust
    return chosen or [str(rng.choice(DEFECTS))]


def _labels(boxes: list[Box]) -> frozenset[str]:
    return frozenset(b[0] for b in boxes) or frozenset([BACKGROUND])


def render_tile(domain: Domain, index: int, size: int = REFERENCE_TILE) -> Sample:
    """Tile ``index`` of ``domain``: ``size`` pixels always show 224 reference pixels of wall."""
    rng = np.random.default_rng([domain.seed, TILE_STREAM, index, size])
    # the same wall seen from nearer or farther: 0.7x to 1.4x the site's usual scale
    scene = new_scene(rng, domain, size / REFERENCE_TILE * float(np.exp(rng.uniform(-0.35, 0.35))))
    img = paint_surface(scene, size, size)
    wanted = _choose_defects(rng)
    boxes: list[Box] = []
    for name in PAINT_ORDER:
        if name in wanted:
            cx, cy = rng.uniform(0.25, 0.75, size=2) * size
            boxes += PAINTERS[name](scene, img, float(cx), float(cy))
    img = apply_camera(scene, img)
    return Sample(camera_artefacts(scene, to_uint8(img)), _labels(boxes), tuple(boxes))


def render_frame(
    domain: Domain, index: int, width: int = 4000, height: int = 3000, scale: float = 1.0
) -> Sample:
    """A full drone frame of a wall with a handful of defects scattered over it.

    ``scale`` is image pixels per reference pixel: at 1.0 a 224-pixel tile of the frame looks
    like a generated tile, which is what inference tiles at downscale 1 see.
    """
    rng = np.random.default_rng([domain.seed, FRAME_STREAM, index, width, height])
    scene = new_scene(rng, domain, scale)
    img = paint_surface(scene, height, width)
    count = int(rng.poisson(4.0)) if rng.random() > 0.15 else 0
    wanted = [str(n) for n in rng.choice(DEFECTS, size=count)]
    boxes: list[Box] = []
    for name in PAINT_ORDER:
        for _ in range(wanted.count(name)):
            cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
            boxes += PAINTERS[name](
                scene, img, float(cx), float(cy), extent=float(rng.uniform(1.0, 2.5))
            )
    img = apply_camera(scene, img)
    return Sample(to_uint8(img), _labels(boxes), tuple(boxes))
