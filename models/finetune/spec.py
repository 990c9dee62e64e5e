"""What a fine-tune job is asked to do (``JobSpec``, the worker's ``job.json``) and which method
it uses by default: torch-free, so the daemon plans and queues a job without importing torch
into its own process (the soak found a daemon 227 MiB larger for good after its first
fine-tune: ``plan`` and ``_write_spec`` imported models.finetune.methods and .job, which
import torch; the training itself runs in the worker process)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from appliance.errors import DataError
from appliance.finetune import METHODS as METHODS

#: From this many labeled samples on a GPU, the whole encoder is trained.
FULL_FROM = 2000


def default_method(samples: int, gpu: bool) -> str:
    return "full" if gpu and samples >= FULL_FROM else "linear"


def judged_out_of_fold(method: str, per_frame: bool, adapt_steps: int) -> bool:
    """Whether the probe trains on every sample and the gate judges each one out of fold
    (``models.finetune.crossval``): not for a parent that decides per frame (its labeled frames
    are the gate's), nor with site adaptation, which would first learn from what it judges."""
    return method == "linear" and not per_frame and adapt_steps <= 0


@dataclass(frozen=True)
class JobSpec:
    parent: str
    samples: tuple[tuple[str, tuple[str, ...]], ...]
    labels: tuple[str, ...]
    out: str
    name: str
    version: str
    method: str = "auto"
    epochs: int | None = None
    budget_s: float | None = None
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None
    val_fraction: float = 0.25
    margin: float = 0.01
    max_label_drop: float = 0.05
    threads: int = 1
    device: str = "cpu"
    gpu_memory_fraction: float = 0.5
    checkpoint: str | None = None
    checkpoint_every_s: float = 15.0
    checkpoint_every_steps: int | None = None
    lora_rank: int = 4
    partial_blocks: int = 2
    #: Write the candidate even when the gate refuses it (benchmarks, notebooks).
    always_export: bool = False
    #: Site adaptation (``models.finetune.adapt``) before the few-shot step: MAE steps on the
    #: training samples' images and ``adapt_images`` (the site's unlabeled imagery, e.g. the
    #: drone frames), never on the held-out split. Off by default (0 steps): measured on real
    #: photos it did not beat the probe alone (docs/FOUNDATION-MODEL.md). ``adapt_max_s`` caps
    #: its training time, and it takes at most ``adapt_share`` of ``budget_s``.
    adapt_images: tuple[str, ...] = ()
    adapt_steps: int = 0
    adapt_max_s: float = 90.0
    adapt_share: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["samples"] = [[p, list(labs)] for p, labs in self.samples]
        data["labels"] = list(self.labels)
        data["adapt_images"] = list(self.adapt_images)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"unknown job fields: {', '.join(sorted(unknown))}")
        data = dict(data)
        data["samples"] = tuple((str(p), tuple(labs)) for p, labs in data["samples"])
        data["labels"] = tuple(data["labels"])
        data["adapt_images"] = tuple(str(p) for p in data.get("adapt_images", ()))
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (not the speed settings)."""
        data = self.to_dict()
        for k in ("threads", "checkpoint", "checkpoint_every_s", "checkpoint_every_steps",
                  "budget_s", "gpu_memory_fraction", "adapt_max_s", "adapt_share"):
            data.pop(k)
        return data
