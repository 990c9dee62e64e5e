"""Labeled samples as the serving pipeline sees them: the tiles it cuts (which it combines into
one image's probabilities by ``models.decide.image_probs``).

The pipeline infers an image as tiles of the model's input at native resolution and reports
a label when the maximum over the tiles reaches its threshold. A labeled photo larger than the
input (real photos are 224 px or more, the model's input 128) used to be downscaled to one
tile for training and calibration, then served as native-scale tiles: another scale and
another decision. Here each sample becomes the tiles the pipeline would cut
(``models.pipeline.serving_tiles``), so the probe learns and calibrates on what is served.
A tile-sized sample is one tile, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.pipeline import serving_tiles
from models.preprocess import Preprocessing

#: A sample that would give more tiles than this (a whole drone frame labeled as one sample)
#: is downscaled to one tile instead, which bounds a job's memory and feature time.
MAX_TILES = 16


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` resized to ``size`` x ``size`` (bilinear)."""
    if pixels.shape[:2] == (size, size):
        return pixels
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def sample_tiles(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(T, S, S, 3): the pipeline's tiles of an image at least the model's input on both sides
    that gives at most ``MAX_TILES``; otherwise the image resized to the input (T = 1)."""
    size = pre.input_size
    if min(pixels.shape[:2]) >= size:
        tiles = serving_tiles(pixels, pre).tiles
        if len(tiles) <= MAX_TILES:
            return tiles
    return resized(pixels, size)[None]


@dataclass(frozen=True)
class Tiles:
    """Every sample's tiles in one array; ``owner[i]`` is the sample tile ``i`` belongs to."""

    tiles: np.ndarray  # (M, S, S, 3) uint8
    owner: np.ndarray  # (M,) int64, sample indices 0..N-1

    @classmethod
    def of(cls, per_sample: list[np.ndarray]) -> Tiles:
        owner = np.concatenate([np.full(len(t), i, dtype=np.int64)
                                for i, t in enumerate(per_sample)])
        return cls(np.concatenate(per_sample), owner)

    def select(self, samples: np.ndarray) -> Tiles:
        """The tiles of ``samples`` (indices), their owners renumbered 0..len(samples)-1."""
        where = np.full(int(self.owner.max()) + 1, -1, dtype=np.int64)
        where[samples] = np.arange(len(samples))
        keep = np.flatnonzero(where[self.owner] >= 0)
        order = keep[np.argsort(where[self.owner[keep]], kind="stable")]
        return Tiles(self.tiles[order], where[self.owner[order]])

