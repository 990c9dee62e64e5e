"""Small builders for test images and artifact copies."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from models.artifact import Artifact


def encode(pixels: np.ndarray, fmt: str = "PNG", **save_args: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **save_args)
    return out.getvalue()


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def copy_artifact(src: Artifact, dest: Path) -> Path:
    dest.mkdir()
    for f in src.root.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest
