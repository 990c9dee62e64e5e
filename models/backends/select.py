"""Choosing a backend by name, or ``auto``: the fastest one that passes the smoke test here.

``auto`` measures once per ``ChoiceKey`` (model bytes, engine versions, hardware, batch size)
and stores the result in the engine cache; later calls build the stored pick directly (after
its golden smoke test) unless asked to ``remeasure``. int8 candidates must also pass
``quantize.evaluate`` against fp32 before they may be timed at all.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from appliance.errors import SpokeError
from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend, probe_throughput
from models.backends.calibration import EVALUATION_SEED, EVALUATION_TILES, card_tiles
from models.backends.choice import (
    ChoiceKey,
    EngineChoice,
    cpu_identity,
    engine_versions,
    gpu_name,
    load_choice,
    save_choice,
)
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.quantize import evaluate
from models.cache import default_cache_dir
from models.errors import BackendUnavailable

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
#: Timing probes use at most this many inputs, so ``auto`` costs seconds, not minutes.
PROBE_BATCH = 16

Factory = Callable[[], Backend]


def available_backends() -> list[str]:
    """Backend names whose libraries are installed and whose hardware is present."""
    engines = engine_versions()
    names: list[str] = [n for n in ("torch", "onnxruntime", "openvino") if n in engines]
    if gpu_name() is not None and "tensorrt" in engines:
        names.append("tensorrt")
    return names


def choice_key(artifact: Artifact, batch_size: int) -> ChoiceKey:
    """The key ``auto``'s measurement is stored under for this model here."""
    files = artifact.card.files
    model = hashlib.sha256("\n".join(files[f] for f in sorted(files)).encode()).hexdigest()
    gpu = gpu_name()
    hardware = f"gpu:{gpu}" if gpu is not None else f"cpu:{cpu_identity()}"
    return ChoiceKey(model, engine_versions(), hardware, batch_size)


def create_backend(
    artifact: Artifact,
    name: str = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: Path | None = None,
    remeasure: bool = False,
) -> Backend:
    """Build the named backend; ``auto`` builds the pick stored for this model, engines,
    hardware and batch size, or measures every usable candidate (see ``_measure``) and stores
    the fastest. ``backend.choice`` says which happened. ``cache_dir`` holds the choices,
    int8 graphs, OpenVINO blobs and TensorRT engines (default: ``default_cache_dir()``)."""
    cache = cache_dir or default_cache_dir()
    if name != "auto":
        return build_backend(artifact, name, precision, batch_size, cache)
    key = choice_key(artifact, batch_size)
    stored = None if remeasure else load_choice(cache, key)
    if stored is not None:
        try:
            backend = build_backend(artifact, stored.backend, stored.precision, batch_size, cache)
            backend.smoke_test()
        except SpokeError as exc:
            log.warning(
                "auto backend: stored pick %s fails here (%s); measuring again", stored.pick, exc
            )
        else:
            backend.choice = stored
            log.info("auto backend: %s from the engine cache", stored.pick)
            return backend
    backend, choice = _measure(artifact, _candidates(artifact, batch_size, cache))
    save_choice(cache, key, choice)
    backend.choice = choice
    return backend


def build_backend(
    artifact: Artifact, name: str, precision: str, batch_size: int, cache: Path
) -> Backend:
    """One named backend at one precision (no ``auto``). Each engine's library is imported
    only when that engine is built: a cached pick of ONNX Runtime never imports torch."""
    if name == "torch":
        from models.backends.torch_backend import TorchBackend

        return TorchBackend(artifact, precision, batch_size=batch_size)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(artifact, precision, batch_size=batch_size, cache_dir=cache)
    if name == "openvino":
        from models.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(artifact, precision, batch_size=batch_size, cache_dir=cache)
    if name == "tensorrt":
        from models.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(artifact, precision, batch_size=batch_size, cache_dir=cache)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def candidate_labels() -> list[str]:
    """``backend/precision`` of every configuration ``auto`` considers on this machine."""
    from models.backends.torch_backend import cpu_has_bf16

    if gpu_name() is not None:
        import torch

        torch_reduced = "torch/bf16" if torch.cuda.is_bf16_supported() else "torch/fp16"
        return ["tensorrt/auto", torch_reduced, "onnxruntime/fp32"]
    labels = ["torch/fp32", "onnxruntime/fp32", "onnxruntime/int8"]
    if cpu_has_bf16():
        labels.append("torch/bf16")
    if "openvino" in engine_versions():
        labels += ["openvino/fp32", "openvino/bf16", "openvino/int8"]
    return labels


def _candidates(artifact: Artifact, batch_size: int, cache: Path) -> dict[str, Factory]:
    def factory(label: str) -> Factory:
        name, precision = label.split("/")
        return lambda: build_backend(artifact, name, precision, batch_size, cache)

    return {label: factory(label) for label in candidate_labels()}


def _measure(artifact: Artifact, candidates: dict[str, Factory]) -> tuple[Backend, EngineChoice]:
    """Time every candidate that builds, passes the golden smoke test and, for int8, agrees
    with fp32 on the evaluation tiles; keep the fastest, close the others."""
    best: Backend | None = None
    best_rate = 0.0
    rates: dict[str, float] = {}
    refused: dict[str, str] = {}
    evaluations: dict[str, dict[str, object]] = {}
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for label, factory in candidates.items():
        try:
            backend = factory()
        except SpokeError as exc:
            log.info("auto backend: skipping %s: %s", label, exc)
            refused[label] = str(exc)
            continue
        try:
            backend.smoke_test()
            if "int8" in label:
                reference = reference or fp32_reference(artifact)
                verdict = evaluate(
                    reference[1],
                    backend.infer(reference[0]),
                    np.asarray([artifact.card.thresholds[lab] for lab in artifact.card.labels]),
                )
                evaluations[label] = verdict.to_dict()
                if not verdict.accepted:
                    log.warning(
                        "auto backend: %s refused, drifts from fp32: %s", label, verdict.reason
                    )
                    refused[label] = f"drifts from fp32: {verdict.reason}"
                    backend.close()
                    continue
            rate = probe_throughput(backend, min(PROBE_BATCH, backend.batch_size))
        except SpokeError as exc:
            log.warning("auto backend: %s failed its smoke test: %s", label, exc)
            refused[label] = f"failed its smoke test: {exc}"
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
    choice = EngineChoice(f"{best.name}/{best.precision}", rates, refused, evaluations)
    log.info("auto backend: measured %s inputs/s, picked %s", rates, choice.pick)
    return best, choice


def fp32_reference(artifact: Artifact) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation tiles and ONNX Runtime's fp32 probabilities for them."""
    tiles = card_tiles(artifact, EVALUATION_TILES, EVALUATION_SEED)
    fp32 = OnnxRuntimeBackend(artifact, "fp32", use_gpu=False)
    try:
        return tiles, fp32.infer(tiles)
    finally:
        fp32.close()
