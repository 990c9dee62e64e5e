"""What one fine-tuning job hands back: the typed contract between ``models.finetune.job``'s
``run_job``, the worker process that writes it as JSON and the daemon that reads it.

The daemon validates the worker's line on arrival (``JobResult.model_validate``) and reads
fields, never dict keys; ``to_dict`` is the JSON the job row, the API and the hub keep seeing.
It lives here, not in ``models``, so the daemon's CLI can read job rows without importing the
ML stack.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

#: How a job may train: the head only on frozen features, LoRA adapters, the last blocks, or
#: the whole encoder (``models.finetune.methods`` implements each; the daemon's options add
#: ``auto``). Here, not in ``models``, so the daemon checks options without the ML stack.
METHODS = ("linear", "lora", "partial", "full")


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelScores(_Contract):
    """One model's scores on the held-out split (``models.training.metrics.Scores``)."""

    per_label_f1: dict[str, float]
    macro_f1: float
    exact_match: float


class GateReport(_Contract):
    """The evaluation gate's verdict, in the shape ``models.finetune.gate.Comparison.to_dict``
    writes (``GateReport.model_validate(comparison.to_dict())``)."""

    current: LabelScores
    candidate: LabelScores
    macro_f1_delta: float
    per_label_delta: dict[str, float]
    margin: float
    max_label_drop: float
    promote: bool
    reasons: tuple[str, ...]
    collapse: str | None


class Skipped(_Contract):
    """A sample the job could not read, with the decoder's reason."""

    path: str
    reason: str


class JobResult(_Contract):
    """One finished job: how it trained, what the gate said, and where the candidate is
    (``candidate``/``trained_weights`` are None when nothing was exported)."""

    method: str
    samples: int
    train: int
    held_out: int
    skipped: tuple[Skipped, ...]
    labels: tuple[str, ...]
    steps: int
    resumed_from: int
    train_seconds: float
    final_loss: float
    details: dict[str, Any]
    comparison: GateReport
    candidate: str | None
    trained_weights: str | None
    version: str
    parent: str
    device: str
    threads: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
