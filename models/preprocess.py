"""Pixel preprocessing shared by every backend: uint8 HWC tiles to normalised float32 NCHW."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.errors import ModelError

#: ImageNet statistics: what timm's ViTs were trained with, so the default for fine-tuning them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Input size and per-channel mean/std (on a 0..1 scale), as stored in the model card."""

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.input_size < 1 or len(self.mean) != 3 or len(self.std) != 3:
            raise ModelError("preprocessing needs a positive input_size and 3 means and stds")
        if min(self.std) <= 0:
            raise ModelError("preprocessing std values must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        try:
            return cls(int(data["input_size"]), tuple(data["mean"]), tuple(data["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid preprocessing {data!r}: {exc}") from exc

    def normalize(self, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 to (N, 3, H, W) float32: one fused scale-and-shift per channel."""
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ModelError(f"expected (N, H, W, 3) uint8 tiles, got {tiles.shape} {tiles.dtype}")
        scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)
        shift = (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)
        out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
        for c in range(3):
            np.multiply(tiles[..., c], scale[c], out=out[:, c], dtype=np.float32)
            out[:, c] += shift[c]
        return out
