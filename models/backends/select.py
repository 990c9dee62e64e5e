"""Choosing a backend by name, or ``auto``: the fastest one that passes the smoke test here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from appliance.errors import SpokeError
from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend, probe_throughput
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.tensorrt_backend import TensorRTBackend
from models.backends.torch_backend import TorchBackend, cpu_has_bf16
from models.errors import BackendUnavailable

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")
#: Timing probes use at most this many inputs, so ``auto`` costs seconds, not minutes.
PROBE_BATCH = 8

Factory = Callable[[], Backend]


def available_backends() -> list[str]:
    """Backend names whose libraries import and whose hardware is present."""
    names = ["torch"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    if torch.cuda.is_available():
        try:
            import tensorrt  # noqa: F401

            names.append("tensorrt")
        except ImportError:
            pass
    return names


def create_backend(
    artifact: Artifact,
    name: str = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: Path | None = None,
) -> Backend:
    """Build the named backend; ``auto`` times every usable candidate that passes the golden
    smoke test (reduced precisions included: the card's tolerance is the contract) and keeps
    the fastest (``backend.selection`` records the rates it saw). ``cache_dir`` holds TensorRT
    engines and quantised graphs (default: ``default_cache_dir()``)."""
    if name == "torch":
        return TorchBackend(artifact, precision, batch_size=batch_size)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(artifact, precision, batch_size=batch_size, cache_dir=cache_dir)
    if name == "tensorrt":
        return TensorRTBackend(artifact, precision, batch_size=batch_size, cache_dir=cache_dir)
    if name != "auto":
        raise BackendUnavailable(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    return _fastest(artifact, _candidates(artifact, batch_size, cache_dir))


def _candidates(artifact: Artifact, batch_size: int, cache_dir: Path | None) -> dict[str, Factory]:
    if torch.cuda.is_available():
        return {
            "tensorrt/auto": lambda: TensorRTBackend(
                artifact, "auto", batch_size=batch_size, cache_dir=cache_dir
            ),
            "torch/fp16": lambda: TorchBackend(artifact, "fp16", batch_size=batch_size),
            "onnxruntime/fp32": lambda: OnnxRuntimeBackend(
                artifact, "fp32", batch_size=batch_size, cache_dir=cache_dir
            ),
        }
    cands: dict[str, Factory] = {
        "torch/fp32": lambda: TorchBackend(artifact, "fp32", batch_size=batch_size),
        "onnxruntime/fp32": lambda: OnnxRuntimeBackend(artifact, "fp32", batch_size=batch_size),
        "onnxruntime/int8": lambda: OnnxRuntimeBackend(
            artifact, "int8", batch_size=batch_size, cache_dir=cache_dir
        ),
    }
    if cpu_has_bf16():
        cands["torch/bf16"] = lambda: TorchBackend(artifact, "bf16", batch_size=batch_size)
    return cands


def _fastest(artifact: Artifact, candidates: dict[str, Factory]) -> Backend:
    best: Backend | None = None
    best_rate = 0.0
    rates: dict[str, float] = {}
    for label, factory in candidates.items():
        try:
            backend = factory()
        except SpokeError as exc:
            log.info("auto backend: skipping %s: %s", label, exc)
            continue
        try:
            backend.smoke_test()
            rate = probe_throughput(backend, min(PROBE_BATCH, backend.batch_size))
        except SpokeError as exc:
            log.warning("auto backend: %s failed its smoke test: %s", label, exc)
            backend.close()
            continue
        rates[label] = round(rate, 2)
        if best is None or rate > best_rate:
            if best is not None:
                best.close()
            best, best_rate = backend, rate
        else:
            backend.close()
    if best is None:
        raise BackendUnavailable(f"no backend could run {artifact.card.ref} on this machine")
    best.selection = rates
    log.info("auto backend: picked %s/%s from %s inputs/s", best.name, best.precision, rates)
    return best
