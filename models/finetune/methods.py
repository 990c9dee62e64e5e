"""What a fine-tune trains: four methods, from cheapest to most expensive.

- ``linear``: the head only, on frozen features (computed once for a few augmented views);
- ``lora``: low-rank adapters on every block's attention (qkv and projection) plus the head;
  merged into the weights at export, so the artifact is a plain ViT;
- ``partial``: the last ``blocks`` transformer blocks, the final norm and the head;
- ``full``: everything.

``default_method`` picks from the sample count and the hardware: the calibrated linear probe
(``models.finetune.probe``) for the few-shot range a site labels (measured: with 20 to 200
labels per class LoRA and the last blocks overfit or collapse, see docs/BENCHMARKS.md), full
fine-tuning only for thousands of samples on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from appliance.errors import DataError

# The methods and the default one live with the job spec (torch-free, for the daemon); kept
# importable here.
from models.finetune.spec import FULL_FROM as FULL_FROM
from models.finetune.spec import METHODS as METHODS
from models.finetune.spec import default_method as default_method
from models.vit import VisionTransformer

#: Peak learning rates per method (AdamW, warm-up then cosine; see models.training.loop).
#: (The linear probe chooses its own, see ``models.finetune.probe``.)
LEARNING_RATES = {"lora": 2e-3, "partial": 3e-4, "full": 1e-4}
#: Epochs when neither ``--epochs`` nor only a time budget is given (the probe stops early by
#: cross-validation instead).
DEFAULT_EPOCHS = {"lora": 12, "partial": 12, "full": 8}


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with ``base`` frozen; B starts at zero (no change)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator
                 ) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        bound = 1.0 / math.sqrt(base.in_features)
        self.lora_a = nn.Parameter(
            (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features,
                        bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _lora_targets(model: VisionTransformer) -> list[tuple[Any, str]]:
    return [(block.attn, name) for block in model.blocks for name in ("qkv", "proj")]


def prepare(model: VisionTransformer, method: str, *, seed: int = 0, rank: int = 4,
            blocks: int = 2) -> None:
    """Set ``requires_grad`` (and add adapters) in place for ``method``."""
    if method not in METHODS:
        raise DataError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    full = method == "full"
    for p in model.parameters():
        p.requires_grad_(full)
    for p in model.head.parameters():
        p.requires_grad_(True)
    if method == "partial":
        for module in [*list(model.blocks)[-max(1, blocks):], model.norm]:
            for p in module.parameters():
                p.requires_grad_(True)
    elif method == "lora":
        gen = torch.Generator().manual_seed(seed + 7)
        for parent, name in _lora_targets(model):
            base = getattr(parent, name)
            setattr(parent, name, LoRALinear(base, rank, alpha=2.0 * rank, generator=gen))


def merge(model: VisionTransformer) -> VisionTransformer:
    """Fold LoRA adapters into plain linears (in place); a no-op for the other methods."""
    for parent, name in _lora_targets(model):
        layer = getattr(parent, name)
        if isinstance(layer, LoRALinear):
            setattr(parent, name, layer.merged())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trained_state(model: nn.Module, everything: bool = False) -> dict[str, Tensor]:
    """What the fine-tune changed and a reviewer needs: adapters (LoRA) or the trainable
    parameters, always the head; every parameter when ``everything`` (the encoder was adapted
    to the site). Never any image."""
    return {k: v.detach().clone().contiguous() for k, v in model.named_parameters()
            if everything or v.requires_grad or k.startswith("head.")}


def grow_head(model: VisionTransformer, extra: int, seed: int) -> None:
    """Add ``extra`` outputs to the head (new labels), keeping the existing rows."""
    if extra <= 0:
        return
    old = model.head
    new = nn.Linear(old.in_features, old.out_features + extra)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        new.weight[: old.out_features].copy_(old.weight)
        new.bias[: old.out_features].copy_(old.bias)
        new.weight[old.out_features :].copy_(
            torch.randn(extra, old.in_features, generator=gen) * 0.02)
        new.bias[old.out_features :].zero_()
    model.head = new
    model.cfg = dataclasses.replace(model.cfg, num_classes=new.out_features)
