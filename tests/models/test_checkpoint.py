"""Loading checkpoints written with timm's key names, including pos-embed resampling."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import load_weights, resample_pos_embed
from models.config import tiny_config
from models.errors import ModelError
from models.vit import VisionTransformer, build_model


def timm_checkpoint(dim: int, depth: int, grid: int, patch: int, classes: int) -> dict:
    """The keys and shapes timm's ``vit_*_patch*`` models save, built by hand (not from our
    model), plus ``fc_norm``-free token pooling as timm's default."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": r(dim),
        "norm.bias": r(dim),
        "head.weight": r(classes, dim),
        "head.bias": r(classes),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": r(dim),
            p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim),
            p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim),
            p + "attn.proj.bias": r(dim),
            p + "norm2.weight": r(dim),
            p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim),
            p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim),
            p + "mlp.fc2.bias": r(dim),
        }
    return sd


def test_timm_checkpoint_loads_at_its_own_size(tmp_path: Path) -> None:
    sd = timm_checkpoint(dim=32, depth=2, grid=4, patch=8, classes=6)
    save_file(sd, str(tmp_path / "timm.safetensors"))
    model = VisionTransformer(tiny_config())
    load_weights(model, tmp_path / "timm.safetensors")
    assert torch.equal(
        model.state_dict()["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(model.pos_embed, sd["pos_embed"])


def test_timm_checkpoint_at_another_size_gets_pos_embed_resampled(tmp_path: Path) -> None:
    sd = timm_checkpoint(dim=32, depth=2, grid=8, patch=8, classes=6)  # trained at 64 px
    save_file(sd, str(tmp_path / "timm.safetensors"))
    model = VisionTransformer(tiny_config())  # 32 px: a 4x4 grid
    load_weights(model, tmp_path / "timm.safetensors")
    assert model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])


def test_resampling_a_constant_grid_keeps_it_constant() -> None:
    pos = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 36, 4), 0.5)], dim=1)
    out = resample_pos_embed(pos, 4)
    assert out.shape == (1, 17, 4)
    assert torch.allclose(out[:, 1:], torch.full((1, 16, 4), 0.5), atol=1e-6)


def test_head_of_another_label_count_is_refused_by_default(tmp_path: Path) -> None:
    save_file(timm_checkpoint(32, 2, 4, 8, classes=1000), str(tmp_path / "in1k.safetensors"))
    with pytest.raises(ModelError, match=r"head.weight: \(1000, 32\) != \(6, 32\)"):
        load_weights(VisionTransformer(tiny_config()), tmp_path / "in1k.safetensors")


def test_head_of_another_label_count_is_skipped_when_not_strict(tmp_path: Path) -> None:
    save_file(timm_checkpoint(32, 2, 4, 8, classes=1000), str(tmp_path / "in1k.safetensors"))
    model = build_model(tiny_config(), seed=0)
    head = model.head.weight.clone()
    load_weights(model, tmp_path / "in1k.safetensors", strict_head=False)
    assert torch.equal(model.head.weight, head)


def test_missing_block_is_named(tmp_path: Path) -> None:
    sd = timm_checkpoint(32, 1, 4, 8, 6)
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(ModelError, match=r"missing .*blocks\.1\.attn\.proj\.bias"):
        load_weights(VisionTransformer(tiny_config()), tmp_path / "short.safetensors")


def test_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_weights(VisionTransformer(tiny_config()), tmp_path / "bad.safetensors")
