"""Augmentations for drone imagery of concrete, on uint8 (N, H, W, 3) tiles.

A drone sees a wall from any roll angle and distance, in changing light and with motion blur:
the eight flips/rotations of the square, a zoom of up to 1/0.75 (scale), brightness, contrast
and saturation jitter, and an occasional blur. Every draw comes from ``rng``, so a batch is a
pure function of the seed and step (resumed runs see the same batches).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.training.batches import augment as flips_and_rotations


def _blur(image: np.ndarray) -> np.ndarray:
    """A [1 2 1]/4 binomial blur in both directions (edges replicated)."""
    x: np.ndarray = image.astype(np.float32)
    p = np.pad(x, ((1, 1), (0, 0), (0, 0)), mode="edge")
    x = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    p = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode="edge")
    x = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return x


def _zoom(image: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = max(2, round(h * scale)), max(2, round(w * scale))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[y0 : y0 + ch, x0 : x0 + cw])
    return np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))


def drone_augment(images: np.ndarray, rng: np.random.Generator, *, jitter: float = 0.2,
                  blur_p: float = 0.25, min_scale: float = 0.75) -> np.ndarray:
    out = flips_and_rotations(images, rng)
    result = np.empty_like(out)
    for i, image in enumerate(out):
        if min_scale < 1.0 and rng.random() < 0.5:
            image = _zoom(image, float(rng.uniform(min_scale, 1.0)), rng)
        x = image.astype(np.float32)
        brightness = 1.0 + rng.uniform(-jitter, jitter)
        contrast = 1.0 + rng.uniform(-jitter, jitter)
        saturation = 1.0 + rng.uniform(-jitter, jitter)
        gray = x.mean(axis=2, keepdims=True)
        x = gray + (x - gray) * saturation
        x = (x - x.mean()) * contrast + x.mean()
        x = x * brightness
        if rng.random() < blur_p:
            x = _blur(x)
        result[i] = np.clip(x, 0, 255).astype(np.uint8)
    return result
