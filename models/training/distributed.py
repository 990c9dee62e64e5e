"""Data-parallel pre-training with PyTorch's own engine (``torchrun`` + DDP).

Under ``torchrun`` every process gets ``RANK``/``WORLD_SIZE``; ``init_from_env`` joins the
process group (NCCL where CUDA exists, gloo on CPU) and returns this process's ``Shard``.
Each step's *global* batch is the same function of ``(seed, step)`` as in one process; rank
``r`` trains on its contiguous slice and DDP averages the gradients, so with the same global
batch N processes follow one process within floating-point tolerance. Only rank 0 writes.
"""

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from appliance.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` processes; one process is ``Shard()``."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def take(self, rows: T) -> T:
        """This rank's contiguous slice of a global batch (an array or tensor)."""
        n = len(rows) // self.world  # type: ignore[arg-type]
        return rows[self.rank * n : (self.rank + 1) * n]  # type: ignore[index]

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise DataError(
                f"the global batch size {batch_size} must be divisible by the "
                f"{self.world} processes"
            )


#: One process on the CPU: the defaults of everything that takes a shard or a device.
ONE = Shard()
CPU = torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> Shard:
    return Shard(dist.get_rank(), dist.get_world_size()) if active() else Shard()


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> Shard:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not active():
        if backend() == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend())
    return current()


def device() -> torch.device:
    """This process's device: its GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap(module: nn.Module) -> nn.Module:
    """DDP around ``module`` when several processes train, else ``module`` itself."""
    if not active() or dist.get_world_size() == 1:
        return module
    ids = [torch.cuda.current_device()] if device().type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    assert isinstance(inner, nn.Module)
    return inner


def mean_over_ranks(values: list[float]) -> list[float]:
    """The average of ``values`` over all processes, identical on every rank."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return [float(v) / dist.get_world_size() for v in t.cpu()]


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a decision all of them must share)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
