"""Numeric building blocks shared by the surface and defect painters.

Everything is float32 numpy arrays in [0, 1] and every random draw comes from an explicit
``numpy.random.Generator``, so an image is a pure function of its seed. Smooth fields are made
by upsampling small random grids with Pillow (C code), which is what keeps generation fast.
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Array = np.ndarray


def resize_field(grid: Array, width: int, height: int) -> Array:
    """Bicubic upsampling of a float32 grid to ``height x width``."""
    img = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def fractal_noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    cell: float,
    octaves: int = 3,
    persistence: float = 0.5,
) -> Array:
    """Zero-mean value noise with roughly unit range; ``cell`` is the coarsest feature in pixels."""
    out = np.zeros((height, width), dtype=np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        gh = max(2, math.ceil(height / max(cell, 1.0)) + 1)
        gw = max(2, math.ceil(width / max(cell, 1.0)) + 1)
        out += amp * resize_field(rng.random((gh, gw), dtype=np.float32) - 0.5, width, height)
        total += amp
        amp *= persistence
        cell /= 2.0
        if cell < 1.0:
            break
    return out * (2.0 / total)


def _separable(field: Array, sigma: float) -> Array:
    radius = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = field.shape
    pad = np.pad(field, radius, mode="edge")
    rows = sum(k[i] * pad[:, i : i + w] for i in range(len(k)))
    return np.asarray(sum(k[i] * rows[i : i + h, :] for i in range(len(k))), dtype=np.float32)


def blur(field: Array, sigma: float) -> Array:
    """Gaussian blur of a 2-D float field.

    Pillow cannot blur float images, so small sigmas use a separable kernel and large ones
    blur a box-downsampled copy and upsample it back (cheap, and smooth enough for masks).
    """
    if sigma < 0.3:
        return field
    h, w = field.shape
    if sigma <= 3.0 or min(h, w) < 16:
        return _separable(field, sigma)
    f = sigma / 1.5
    small_w, small_h = max(4, round(w / f)), max(4, round(h / f))
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    small = np.asarray(img.resize((small_w, small_h), Image.Resampling.BOX), dtype=np.float32)
    return resize_field(_separable(small, 1.5 * small_w / w), w, h)


def blur_rgb(img: Array, sigma: float) -> Array:
    """Gaussian blur of an RGB float image, through 8-bit (sub-level precision is noise anyway)."""
    if sigma < 0.3:
        return img
    pil = Image.fromarray(to_uint8(img))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255.0


def to_uint8(img: Array) -> Array:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class MaskPainter:
    """Anti-aliased drawing into a float mask: Pillow draws at ``ss`` times the size, then reduces.

    Pillow's lines and polygons are aliased and have integer widths; supersampling gives
    sub-pixel widths, which hairline cracks need.
    """

    def __init__(self, height: int, width: int, ss: int = 4, fill: int = 0) -> None:
        self.ss = ss
        self.height, self.width = height, width
        self.image = Image.new("L", (width * ss, height * ss), fill)
        self.draw = ImageDraw.Draw(self.image)

    def _pt(self, x: float, y: float) -> tuple[float, float]:
        return (x * self.ss, y * self.ss)

    def line(
        self, x0: float, y0: float, x1: float, y1: float, width: float, value: int = 255
    ) -> None:
        w = max(1, round(width * self.ss))
        self.draw.line([self._pt(x0, y0), self._pt(x1, y1)], fill=value, width=w)
        if w > 2:  # round joints so a polyline has no notches
            r = w / 2.0
            cx, cy = self._pt(x1, y1)
            self.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)

    def polygon(self, points: list[tuple[float, float]], value: int = 255) -> None:
        self.draw.polygon([self._pt(x, y) for x, y in points], fill=value)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: int = 255) -> None:
        x, y = self._pt(cx, cy)
        self.draw.ellipse(
            [x - rx * self.ss, y - ry * self.ss, x + rx * self.ss, y + ry * self.ss], fill=value
        )

    def result(self) -> Array:
        small = self.image.reduce(self.ss) if self.ss > 1 else self.image
        return np.asarray(small, dtype=np.float32) / 255.0


def blend(img: Array, color: Array, alpha: Array) -> Array:
    """``img`` towards ``color`` (an RGB triple or image) by ``alpha`` (H x W), in place."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * color
    return img


def luminance(img: Array) -> Array:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
