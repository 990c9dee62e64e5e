"""``ViTConfig``: the architecture of a model, with named presets (timm's naming, our label set)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from models.errors import ModelError

#: CODEBRIM's six classes; multi-label, so "background" can co-occur with nothing else.
CODEBRIM_LABELS: tuple[str, ...] = (
    "background",
    "crack",
    "spallation",
    "efflorescence",
    "exposed_bars",
    "corrosion_stain",
)

#: Weight-init policies understood by ``models.vit.init_weights`` (named as timm names them).
WEIGHT_INIT_POLICIES = ("timm", "jax")
#: What the head sees: the class token (timm's "token"), the mean patch token ("avg"), or both
#: side by side. A self-supervised (MAE) encoder's class token alone probes poorly.
GLOBAL_POOLS = ("token", "avg", "token+avg")


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shape of a ViT; stored verbatim in the model card."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = len(CODEBRIM_LABELS)
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    weight_init: str = "timm"
    global_pool: str = "token"

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ModelError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ModelError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if (
            min(
                self.img_size,
                self.patch_size,
                self.embed_dim,
                self.depth,
                self.num_heads,
                self.num_classes,
                self.in_chans,
            )
            < 1
        ):
            raise ModelError("every ViTConfig size must be positive")
        if self.weight_init not in WEIGHT_INIT_POLICIES:
            raise ModelError(
                f"unknown weight_init {self.weight_init!r}; "
                f"choose one of {', '.join(WEIGHT_INIT_POLICIES)}"
            )
        if self.global_pool not in GLOBAL_POOLS:
            raise ModelError(
                f"unknown global_pool {self.global_pool!r}; choose one of {', '.join(GLOBAL_POOLS)}"
            )

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled embedding the head reads."""
        return self.embed_dim * (2 if self.global_pool == "token+avg" else 1)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def flops_per_image(self) -> float:
        """Multiply-adds x2 of one forward pass (matmuls only): the GFLOP/s denominator."""
        n = self.num_patches + 1
        d = self.embed_dim
        hidden = int(d * self.mlp_ratio)
        patch = self.num_patches * d * self.in_chans * self.patch_size**2
        per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * hidden
        return 2.0 * (patch + self.depth * per_block + self.pooled_dim * self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Refuses unknown keys: a card written by a newer version must not half-load."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"unknown ViTConfig keys: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"invalid ViTConfig: {exc}") from exc


PRESETS: dict[str, ViTConfig] = {
    "vit-tiny-p16-224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit-small-p16-224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit-base-p16-224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit-tiny-p16-112": ViTConfig(img_size=112, embed_dim=192, depth=12, num_heads=3),
    "vit-tiny-p16-128": ViTConfig(img_size=128, embed_dim=192, depth=12, num_heads=3),
}


def preset(name: str, **overrides: Any) -> ViTConfig:
    """A named preset, optionally with fields replaced (e.g. ``num_classes``)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return dataclasses.replace(base, **overrides)


def tiny_config(**overrides: Any) -> ViTConfig:
    """A very small ViT (32 px, dim 32, depth 2) for tests and notebooks: runs in milliseconds."""
    fields: dict[str, Any] = {
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
    }
    fields.update(overrides)
    return ViTConfig(**fields)
