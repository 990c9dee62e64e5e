"""Cutting a large image into model-sized tiles, and mapping tiles back to original pixels.

Tiles step by ``tile - overlap``; the last tile on each axis is moved back to end exactly at the
image edge (so the edge tile overlaps its neighbour by at least ``overlap``) rather than hanging
over it. An axis shorter than a tile gets one tile, padded with the normalisation mean. With
``downscale`` d the image is box-averaged by d first, so a tile covers d*tile original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.errors import ModelError


@dataclass(frozen=True)
class TiledImage:
    """``tiles``: (N, tile, tile, 3) uint8; ``boxes``: (N, 4) int64 ``x0, y0, x1, y1`` in the
    original image's pixels (end-exclusive, clipped to the image)."""

    tiles: np.ndarray
    boxes: np.ndarray
    width: int
    height: int


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: stride ``tile - overlap``, last tile flush with the end."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ModelError(f"need tile >= 1 and 0 <= overlap < tile, got {tile}, {overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def tile_image(
    pixels: np.ndarray,
    tile: int,
    overlap: int = 0,
    downscale: int = 1,
    pad_value: tuple[int, int, int] = (0, 0, 0),
) -> TiledImage:
    """Tiles of (height, width, 3) uint8 ``pixels``; see the module docstring for the geometry."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ModelError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    if downscale < 1:
        raise ModelError(f"downscale must be a positive integer, not {downscale}")
    height, width = pixels.shape[:2]
    work = pixels
    if downscale > 1:
        work = np.asarray(Image.fromarray(pixels).reduce(downscale))
    wh, ww = work.shape[:2]
    xs, ys = tile_positions(ww, tile, overlap), tile_positions(wh, tile, overlap)
    if wh < tile or ww < tile:
        padded = np.empty((max(wh, tile), max(ww, tile), 3), dtype=np.uint8)
        padded[:] = np.asarray(pad_value, dtype=np.uint8)
        padded[:wh, :ww] = work
        work = padded
    tiles = np.empty((len(xs) * len(ys), tile, tile, 3), dtype=np.uint8)
    boxes = np.empty((len(tiles), 4), dtype=np.int64)
    i = 0
    for y in ys:
        for x in xs:
            tiles[i] = work[y : y + tile, x : x + tile]
            boxes[i] = (
                x * downscale,
                y * downscale,
                min((x + tile) * downscale, width),
                min((y + tile) * downscale, height),
            )
            i += 1
    return TiledImage(tiles, boxes, width, height)
