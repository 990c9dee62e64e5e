"""A resumable training loop under a step or time budget.

Checkpoints are written atomically (temp file, fsync, rename), so a kill -9 at any moment
leaves either the previous checkpoint or the new one. The loss of step ``s`` is a pure function
of ``s`` (see ``batches``), so a resumed run continues exactly where the killed one was.
"""

import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from appliance.errors import DataError
from appliance.fsutil import atomic_write
from models.progress import progress_bar
from models.training import distributed

LossFn = Callable[[int], Tensor]
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Budget:
    """Stop after ``steps`` steps or ``seconds`` of training, whichever comes first."""

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise DataError("a training budget needs steps or seconds")
        if (self.steps is not None and self.steps < 1) or (
            self.seconds is not None and self.seconds <= 0
        ):
            raise DataError("a training budget must be positive")

    def progress(self, step: int, elapsed: float) -> float:
        p = 0.0
        if self.steps is not None:
            p = step / self.steps
        if self.seconds is not None:
            p = max(p, elapsed / self.seconds)
        return min(1.0, p)


@dataclass(frozen=True)
class LoopResult:
    steps: int
    seconds: float
    final_loss: float
    precision: str
    resumed_from: int


def lr_at(progress: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    t = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def autocast(precision: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass(frozen=True)
class Settings:
    precision: str
    threads: int
    #: Measured seconds per forward+backward for each candidate, "fp32 x1" style keys.
    timings: tuple[tuple[str, float], ...] = ()

    def describe(self) -> str:
        measured = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings)
        return f"{self.precision} on {self.threads} CPU thread(s)" + (
            f" (measured per step: {measured})" if measured else ""
        )


def choose_settings(
    module: nn.Module, loss_fn: LossFn, precision: str, threads: int | None, trials: int = 2
) -> Settings:
    """Pick what was asked for, or time forward+backward for each candidate and keep the fastest.

    ``precision="auto"`` tries fp32 and bf16 autocast; ``threads=None`` tries one thread and all
    of them (on a CPU shared with other work, one thread is often faster: no spin-waiting).
    Candidates are interleaved so background load hits them alike; no weights change.
    """
    if precision not in PRECISIONS:
        raise DataError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise DataError("the thread count must be at least 1")
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    counts = sorted({1, len(os.sched_getaffinity(0))}) if threads is None else [threads]
    candidates = [Settings(p, t) for p in precisions for t in counts]
    if len(candidates) == 1:
        torch.set_num_threads(candidates[0].threads)
        return candidates[0]
    best = dict.fromkeys(candidates, math.inf)
    for i in range(trials + 1):
        for c in candidates:
            torch.set_num_threads(c.threads)
            start = time.perf_counter()
            with autocast(c.precision):
                loss = loss_fn(i)
            loss.backward()
            if i:  # the first round warms up every path
                best[c] = min(best[c], time.perf_counter() - start)
    module.zero_grad(set_to_none=True)
    chosen = min(best, key=lambda c: best[c])
    torch.set_num_threads(chosen.threads)
    timings = tuple((f"{c.precision} x{c.threads}", t) for c, t in best.items())
    return Settings(chosen.precision, chosen.threads, timings)


def _save(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def _load(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: say so, never train on it
        raise DataError(
            f"checkpoint {path} is unreadable ({exc}); remove it to start over"
        ) from exc
    if state.get("fingerprint") != fingerprint:
        raise DataError(
            f"checkpoint {path} was made with other settings; use the same options "
            "or remove it to start over"
        )
    return state


def train(
    module: nn.Module,
    loss_fn: LossFn,
    budget: Budget,
    *,
    lr: float,
    weight_decay: float,
    precision: str = "auto",
    threads: int | None = None,
    checkpoint: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_every_steps: int | None = None,
    desc: str = "training",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Train ``module`` in place with AdamW on ``loss_fn(step)`` until ``budget`` is spent.

    ``module`` may be a DDP wrapper (``distributed.wrap``): then the step time and loss are
    averaged over the processes (so all stop at the same step), and only rank 0 checkpoints,
    saving the unwrapped weights, which resume under any number of processes.
    """
    shard = distributed.current()
    main = shard.main
    inner = distributed.unwrap(module)
    fingerprint = dict(fingerprint or {})
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )
    step, elapsed, loss_ema = 0, 0.0, math.nan
    state = _load(checkpoint, fingerprint) if checkpoint else None
    module.train()
    if state is not None:
        inner.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, elapsed, loss_ema, precision = (
            state["step"],
            state["elapsed"],
            state["loss_ema"],
            state["precision"],
        )
        torch.set_num_threads(threads or state["threads"])
        log(f"{desc}: resuming from step {step} ({elapsed:.0f} s done) in {checkpoint}")
    else:
        settings = distributed.from_main(choose_settings(module, loss_fn, precision, threads))
        torch.set_num_threads(settings.threads)
        precision = settings.precision
        log(f"{desc}: training in {settings.describe()}")
    resumed_from = step

    def save() -> None:
        if checkpoint is not None and main:
            _save(
                checkpoint,
                {
                    "fingerprint": fingerprint,
                    "rank": shard.rank,
                    "processes": shard.world,
                    "step": step,
                    "elapsed": elapsed,
                    "loss_ema": loss_ema,
                    "precision": precision,
                    "threads": torch.get_num_threads(),
                    "model": inner.state_dict(),
                    "optim": opt.state_dict(),
                },
            )

    total = budget.steps if budget.steps is not None else math.ceil(budget.seconds or 0)
    unit = "step" if budget.steps is not None else "s"
    bar = progress_bar(
        total=total,
        initial=step if unit == "step" else int(elapsed),
        desc=desc,
        unit=unit,
        enabled=progress and main,
        dynamic_ncols=True,
    )
    last_save = time.monotonic()
    while budget.progress(step, elapsed) < 1.0:
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(budget.progress(step, elapsed), lr)
        with autocast(precision):
            loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        value, dt = distributed.mean_over_ranks([float(loss.detach()), time.perf_counter() - start])
        if not math.isfinite(value):
            raise DataError(
                f"{desc}: the loss became {value} at step {step}; lower the learning rate"
            )
        loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
        step += 1
        elapsed += dt
        bar.update(1 if unit == "step" else int(elapsed) - bar.n)
        bar.set_postfix(loss=f"{loss_ema:.4f}", refresh=False)
        due_steps = checkpoint_every_steps is not None and step % checkpoint_every_steps == 0
        if due_steps or time.monotonic() - last_save >= checkpoint_every_s:
            save()
            last_save = time.monotonic()
    bar.close()
    save()
    module.eval()
    return LoopResult(step, elapsed, loss_ema, precision, resumed_from)
