"""Tiles to calibrate and evaluate reduced-precision graphs on: the card's golden input plus
generated concrete-like tiles (no data set is downloaded; every machine makes the same tiles).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.artifact import Artifact

#: Generated tiles beside the golden input: enough for stable activation ranges, few enough
#: that calibrating a ViT-S on two cores takes seconds.
CALIBRATION_TILES = 32
EVALUATION_TILES = 64
CALIBRATION_SEED = 1
EVALUATION_SEED = 2


def concrete_texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width, 3) uint8: blotchy low-frequency shading plus fine grain, like a photo of
    concrete (and unlike white noise, it compresses and decodes at a realistic rate)."""
    lo = int(rng.integers(40, 120))
    blotches = Image.fromarray(
        rng.integers(lo, lo + 90, (height // 64 + 1, width // 64 + 1), dtype=np.uint8)
    ).resize((width, height), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, (height, width), dtype=np.int16)
    grey = np.clip(np.asarray(blotches, dtype=np.int16) + grain, 0, 255)
    tint = rng.uniform(0.85, 1.05, 3)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


def generated_tiles(count: int, size: int, seed: int) -> np.ndarray:
    """(count, size, size, 3) uint8 textures; a third carry a dark crack, a third a rust stain,
    so the set spans more than bare concrete."""
    rng = np.random.default_rng(seed)
    tiles = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        tile = concrete_texture(size, size, rng)
        if i % 3 == 1:
            x = int(rng.integers(0, size))
            for y in range(size):
                x = int(np.clip(x + rng.integers(-2, 3), 0, size - 3))
                tile[y, x : x + 3] //= 4
        elif i % 3 == 2:
            cy, cx = rng.integers(0, size, 2)
            yy, xx = np.ogrid[:size, :size]
            stain = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2
            tile[stain] = (tile[stain] * np.array([1.0, 0.55, 0.3])).astype(np.uint8)
        tiles[i] = tile
    return tiles


def card_tiles(artifact: Artifact, generated: int, seed: int) -> np.ndarray:
    """The card's golden images followed by ``generated`` textures, preprocessed (N, C, H, W)."""
    pre = artifact.card.preprocessing
    golden = artifact.card.golden.images(pre.input_size)
    return pre.normalize(np.concatenate([golden, generated_tiles(generated, pre.input_size, seed)]))
