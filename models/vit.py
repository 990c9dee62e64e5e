"""A Vision Transformer in plain PyTorch whose ``state_dict`` names match timm's ViT.

Matching timm's names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.attn.qkv``...)
means a timm checkpoint loads with no key mapping (see ``models.checkpoint``).
``forward`` returns logits (train with BCE-with-logits); ``Probabilities`` wraps a model so that
exported graphs and every backend return per-label sigmoid probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ViTConfig


class PatchEmbed(nn.Module):
    """Image to a sequence of patch embeddings with one strided convolution."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention on the fused SDPA kernel (flash/memory-efficient where it can)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, cfg.embed_dim * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token and a multi-label linear head."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.pooled_dim, cfg.num_classes)
        init_weights(self, cfg.weight_init)

    def forward_features(self, x: Tensor, kept: Tensor | None = None) -> Tensor:
        """Normalised token sequence, class token first: (B, 1 + patches, D). With ``kept``
        (B, K) patch indices, only those patches go through the blocks (B, 1 + K, D): MAE's
        visible quarter, or the patches a supervised training step keeps (PatchDropout)."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        if kept is not None:
            x = torch.gather(x, 1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, x], dim=1)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling (``cfg.global_pool``), then the head; ``pre_logits`` returns the pooled
        embedding."""
        if self.cfg.global_pool == "token":
            x = x[:, 0]
        elif self.cfg.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        else:
            x = torch.cat([x[:, 0], x[:, 1:].mean(dim=1)], dim=-1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, kept: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, kept))


class Probabilities(nn.Module):
    """Sigmoid on top of a model's logits: what exported graphs and all backends return."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.model(x))


def init_weights(model: VisionTransformer, policy: str) -> None:
    """Initialise in place. ``timm``: truncated normal 0.02 (timm's default); ``jax``: xavier
    linears, lecun patch embedding, zero head (the original JAX ViT, stable for fine-tuning)."""
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.normal_(model.cls_token, std=1e-6)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if policy == "jax":
                if name == "head":
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            if policy == "jax":
                fan_in = module.in_channels * math.prod(module.kernel_size)
                nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
            else:
                nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(cfg: ViTConfig, seed: int | None = None) -> VisionTransformer:
    """A freshly initialised model in eval mode; ``seed`` makes the init reproducible."""
    if seed is None:
        model = VisionTransformer(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VisionTransformer(cfg)
    return model.eval()
