"""The ViT's shapes, determinism, presets and config validation."""

import dataclasses

import pytest
import torch

from models.config import PRESETS, ViTConfig, preset, tiny_config
from models.errors import ModelError
from models.vit import Probabilities, build_model


def test_forward_shapes() -> None:
    cfg = tiny_config()
    model = build_model(cfg, seed=0)
    x = torch.randn(3, 3, cfg.img_size, cfg.img_size)
    feats = model.forward_features(x)
    assert feats.shape == (3, 1 + cfg.num_patches, cfg.embed_dim)
    assert model.forward_head(feats, pre_logits=True).shape == (3, cfg.embed_dim)
    assert model(x).shape == (3, cfg.num_classes)


def test_probabilities_are_sigmoid_of_logits() -> None:
    model = build_model(tiny_config(), seed=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(Probabilities(model)(x), torch.sigmoid(model(x)))


def test_same_seed_gives_identical_weights_and_outputs() -> None:
    a, b = build_model(tiny_config(), seed=7), build_model(tiny_config(), seed=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert torch.equal(a(x), a(x))


def test_different_seeds_differ() -> None:
    a, b = build_model(tiny_config(), seed=1), build_model(tiny_config(), seed=2)
    assert not torch.equal(a.pos_embed, b.pos_embed)


def test_jax_init_zeroes_the_head() -> None:
    model = build_model(tiny_config(weight_init="jax"), seed=0)
    assert torch.count_nonzero(model.head.weight) == 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name: str) -> None:
    cfg = preset(name)
    assert cfg.embed_dim % cfg.num_heads == 0
    assert cfg.flops_per_image() > 1e8


def test_vit_small_flops_match_the_published_figure() -> None:
    """timm lists ViT-S/16 at 224 as 4.6 GMACs, i.e. about 9.2 GFLOP."""
    assert preset("vit-small-p16-224").flops_per_image() == pytest.approx(9.2e9, rel=0.03)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown preset"):
        preset("vit-huge")


def test_config_rejects_a_size_that_is_not_a_patch_multiple() -> None:
    with pytest.raises(ModelError, match="multiple of patch_size"):
        ViTConfig(img_size=30, patch_size=16)


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    cfg = tiny_config()
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match="unknown ViTConfig keys: extra"):
        ViTConfig.from_dict({**dataclasses.asdict(cfg), "extra": 1})
