"""Loading and saving weights in safetensors with timm's key names.

A timm ViT checkpoint loads directly; when its image size differs from ours, the positional
embedding grid is resized bicubically (as timm's ``resample_abs_pos_embed`` does).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.errors import ModelError
from models.vit import VisionTransformer

#: Keys some timm checkpoints carry that hold no weights for our architecture (identity layers).
_IGNORED_PREFIXES = ("fc_norm.", "head_drop.", "pre_logits.")


def resample_pos_embed(pos_embed: Tensor, grid_size: int) -> Tensor:
    """Bicubic resize of a (1, 1 + g*g, D) embedding to (1, 1 + grid_size**2, D); the class
    token's embedding is kept as is."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    if old * old != patch_pos.shape[1]:
        raise ModelError(f"pos_embed has {patch_pos.shape[1]} patch positions, not a square grid")
    if old == grid_size:
        return pos_embed
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(
        grid,
        size=(grid_size, grid_size),
        mode="bicubic",
        align_corners=False,
        antialias=grid_size < old,
    )
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim)
    return torch.cat([cls_pos, patch_pos.to(pos_embed.dtype)], dim=1)


def load_state_dict(
    model: VisionTransformer, state: dict[str, Tensor], strict_head: bool = True
) -> None:
    """Load a timm-named state dict into ``model``, resampling ``pos_embed`` if needed.

    ``strict_head=False`` skips a head of another label count (starting a fine-tune from a
    pre-trained backbone) instead of refusing it.
    """
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], model.cfg.grid_size)
    own = model.state_dict()
    fresh_head: set[str] = set()
    if (
        not strict_head
        and "head.weight" in state
        and state["head.weight"].shape != own["head.weight"].shape
    ):
        fresh_head = {"head.weight", "head.bias"}
        state = {k: v for k, v in state.items() if k not in fresh_head}
    missing = sorted(set(own) - set(state) - fresh_head)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"checkpoint does not fit the model: missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} != {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise ModelError("checkpoint shapes do not fit the model: " + "; ".join(wrong))
    model.load_state_dict(state, strict=False)


def load_weights(model: VisionTransformer, path: Path, strict_head: bool = True) -> None:
    """Load a safetensors file (ours or timm's) into ``model``."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read weights {path}: {exc}") from exc
    load_state_dict(model, state, strict_head=strict_head)


def save_weights(model: VisionTransformer, path: Path) -> None:
    """Write the state dict as safetensors (contiguous copies, since safetensors needs them)."""
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
