"""Masked autoencoder (He et al., 2022) around our ViT: the self-supervised pre-training task.

The encoder is the ``VisionTransformer`` itself (its timm-named weights are what ships); only
the visible quarter of the patches goes through it, which is what makes MAE cheap enough for a
CPU. The small decoder is thrown away after pre-training. Loss: mean squared error on the
per-patch normalised pixels of the masked patches (the paper's ``norm_pix_loss``), optionally
of a box-blurred copy of the image (``target_blur``).
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.vit import Block, VisionTransformer


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        target_blur: int = 0,
    ) -> None:
        super().__init__()
        cfg = encoder.cfg
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.target_blur = target_blur
        self.patch = cfg.patch_size
        dec_cfg = dataclasses.replace(cfg, embed_dim=decoder_dim, num_heads=decoder_heads)
        self.decoder_embed = nn.Linear(cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, decoder_dim))
        self.decoder_blocks = nn.Sequential(*[Block(dec_cfg) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * cfg.in_chans)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) to (B, patches, p*p*C), patches in row-major order like PatchEmbed."""
        b, c, h, w = imgs.shape
        p = self.patch
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def smooth(self, imgs: Tensor) -> Tensor:
        """Targets without sensor noise and sand grain when ``target_blur`` > 1: those pixels
        are unpredictable, and fitting them teaches the encoder nothing about defects."""
        k = self.target_blur
        if k <= 1:
            return imgs
        return F.avg_pool2d(imgs, k, stride=1, padding=k // 2, count_include_pad=False)[
            ..., : imgs.shape[-2], : imgs.shape[-1]
        ]

    def forward(
        self, imgs: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """The reconstruction loss for one batch; ``generator`` makes the masks reproducible,
        or ``noise`` (B, patches) gives them (a DDP rank's share of the global batch's)."""
        b, n = imgs.shape[0], self.encoder.cfg.num_patches
        keep = max(1, round(n * (1.0 - self.mask_ratio)))
        if noise is None:
            noise = torch.rand(b, n, generator=generator)
        order = noise.to(imgs.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        latent = self.encoder.forward_features(imgs, order[:, :keep])

        y = self.decoder_embed(latent)
        masks = self.mask_token.expand(b, n - keep, -1).to(y.dtype)
        seq = torch.cat([y[:, 1:], masks], dim=1)
        seq = torch.gather(seq, 1, restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], seq], dim=1) + self.decoder_pos_embed
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(y)))[:, 1:].float()

        target = self.patchify(self.smooth(imgs)).float()
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        masked = torch.ones(b, n, device=imgs.device)
        masked[:, :keep] = 0
        masked = torch.gather(masked, 1, restore)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * masked).sum() / masked.sum()
