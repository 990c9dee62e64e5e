"""Site adaptation: a short masked-autoencoder run, continued from the parent's encoder, on the
site's own unlabeled imagery, before the few-shot step.

Why: frozen features of a model pre-trained only on generated walls do not separate real
photographs (docs/FOUNDATION-MODEL.md, "Real photos: probe features": no choice of features
got past about 0.67). A site has far more unlabeled pixels than labels: every drone frame and
every sample's image. MAE on them (75 % of patches hidden, so a step is cheap on a CPU) moves
the encoder towards the site's textures without any label. The decoder is fresh and thrown
away; the encoder's weights are updated in place.

The run is bounded by ``steps`` and ``seconds``, checkpointed by ``models.training.loop`` (a
killed job resumes it, and a finished one is not repeated), and cancellable like any worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.finetune.augment import drone_augment
from models.preprocess import Preprocessing
from models.training.loop import Budget, train
from models.training.mae import MaskedAutoencoder
from models.vit import VisionTransformer

#: Peak learning rate (AdamW, warm-up then cosine): low enough to keep the parent's features.
LR = 3e-4
BATCH = 32
MASK_RATIO = 0.75


@dataclass(frozen=True)
class Adapted:
    """How the adaptation went (the job's ``details["adapt"]``)."""

    images: int
    steps: int
    seconds: float
    first_loss: float
    final_loss: float
    resumed_from: int

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "steps": self.steps, "seconds": round(self.seconds, 2),
                "first_loss": round(self.first_loss, 5), "final_loss": round(self.final_loss, 5),
                "resumed_from": self.resumed_from}


def adapt(model: VisionTransformer, images: np.ndarray, pre: Preprocessing, *, seed: int,
          steps: int, seconds: float | None, threads: int,
          checkpoint: Path | None = None, fingerprint: dict[str, Any] | None = None,
          report: Callable[[dict[str, Any]], None] = lambda _: None,
          log: Callable[[str], None] = lambda _: None) -> Adapted:
    """Continue MAE pre-training of ``model``'s encoder on ``images`` (N, S, S, 3) uint8 (the
    unlabeled pool, augmented) for up to ``steps`` steps or ``seconds`` of training."""
    mae = MaskedAutoencoder(model, mask_ratio=MASK_RATIO)
    gen = torch.Generator().manual_seed(seed + 23)
    with torch.no_grad():  # a reproducible fresh decoder, whatever torch's global seed is
        for name, p in mae.named_parameters():
            if not name.startswith("encoder.") and p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    batch = min(BATCH, len(images))
    first: list[float] = []
    last = {"t": 0.0}
    started = time.monotonic()

    def loss_fn(step: int) -> Tensor:
        rng = np.random.default_rng([seed, step, 29])
        idx = rng.choice(len(images), batch, replace=False)
        x = torch.from_numpy(pre.normalize(drone_augment(images[idx], rng)))
        loss = mae(x, generator=torch.Generator().manual_seed(seed * 100_003 + step))
        if not first:
            first.append(float(loss.detach()))
        now = time.monotonic()
        if now - last["t"] >= 0.5 or step + 1 >= steps:
            last["t"] = now
            report({"phase": "adapting", "step": step + 1, "steps": steps,
                    "images": len(images), "loss": round(float(loss.detach()), 5),
                    "elapsed_s": round(now - started, 1)})
        return loss

    result = train(mae, loss_fn, Budget(steps=steps, seconds=seconds), lr=LR,
                   weight_decay=0.05, precision="fp32", threads=threads,
                   checkpoint=checkpoint, fingerprint=(fingerprint or {}) | {"adapt": steps},
                   desc="site adaptation (MAE)", progress=False, log=log)
    model.eval()
    return Adapted(len(images), result.steps, result.seconds,
                   first[0] if first else result.final_loss, result.final_loss,
                   result.resumed_from)
