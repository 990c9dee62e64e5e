"""Deterministic batches from an in-memory tile set, with drone-friendly augmentation.

The batch at step ``s`` depends only on ``(seed, s)``: a resumed run sees exactly the batches
an uninterrupted one would, with no data-loader state to save. Under DDP each process makes the
same global batch and keeps its ``Shard`` of it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.preprocess import Preprocessing
from models.training.distributed import CPU, ONE, Shard


@dataclass(frozen=True)
class TileSet:
    images: np.ndarray  # (N, H, W, 3) uint8
    targets: np.ndarray  # (N, labels) float32 multi-hot

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "TileSet":
        return TileSet(self.images[index], self.targets[index])


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The eight rotations and flips of the square: a drone sees a wall from any roll angle."""
    out = images.copy()
    codes = rng.integers(0, 8, size=len(images))
    for code in range(1, 8):
        idx = np.nonzero(codes == code)[0]
        if len(idx):
            x = np.rot90(images[idx], k=code % 4, axes=(1, 2))
            out[idx] = x[:, :, ::-1] if code >= 4 else x
    return out


def step_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the batch at ``step``: consecutive slices of one shuffle per epoch."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[pos * batch_size : (pos + 1) * batch_size]


def make_batch(
    tiles: TileSet,
    pre: Preprocessing,
    batch_size: int,
    seed: int,
    step: int,
    train: bool = True,
    shard: Shard = ONE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of the global batch of ``step`` (all of it in one process)."""
    idx = step_indices(len(tiles), batch_size, seed, step)
    images = tiles.images[idx]
    if train:
        images = augment(images, np.random.default_rng([seed, step, 1]))
    images, targets = shard.take(images), shard.take(tiles.targets[idx])
    return torch.from_numpy(pre.normalize(images)), torch.from_numpy(targets)


def patch_noise(batch_size: int, patches: int, seed: int, step: int, shard: Shard = ONE
                ) -> Tensor:
    """This process's rows of the global batch's (batch, patches) uniform noise at ``step``:
    which patches MAE hides, or a supervised step drops, whatever the number of processes."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return shard.take(torch.rand(batch_size, patches, generator=gen))


@dataclass(frozen=True)
class PatchDropout:
    """Each training image keeps ``keep`` of its ``patches`` patch tokens, chosen at random
    (Liu et al., 2022): a step costs about half at ``keep`` = half, and the steps saved buy
    more steps in the same time. Inference always sees every patch."""

    patches: int
    keep: int


def supervised_loss(
    model: nn.Module,
    tiles: TileSet,
    pre: Preprocessing,
    batch_size: int,
    seed: int,
    shard: Shard = ONE,
    device: torch.device = CPU,
    dropout: PatchDropout | None = None,
) -> Callable[[int], Tensor]:
    """Multi-label BCE on the batch of each step (with ``dropout``, on the kept patches)."""

    def loss(step: int) -> Tensor:
        x, y = make_batch(tiles, pre, batch_size, seed, step, shard=shard)
        kept = None
        if dropout is not None:
            noise = patch_noise(batch_size, dropout.patches, seed, step, shard)
            kept = noise.argsort(dim=1)[:, : dropout.keep].to(device)
        logits = model(x.to(device), kept)
        return F.binary_cross_entropy_with_logits(logits.float(), y.to(device))

    return loss
