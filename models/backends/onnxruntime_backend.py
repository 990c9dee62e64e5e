"""ONNX Runtime backend: the TensorRT and CUDA execution providers when this build has them and a
GPU is present, otherwise the CPU provider; on the CPU optionally a dynamically quantised int8
graph (VNNI integer matmuls), cached next to TensorRT engines."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import ONNX_FILE, Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend, default_cache_dir
from models.errors import BackendError, BackendUnavailable
from models.export import INPUT_NAME, OUTPUT_NAME

#: Preference order; ONNX Runtime falls back down the list per node.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PRECISIONS = ("auto", "fp32", "int8")


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` with every graph optimisation on. ``fp32`` runs the artifact's
    graph; ``int8`` runs its dynamically quantised copy (weights int8, activations quantised
    per batch), which the golden smoke test must still pass."""

    name = "onnxruntime"

    def __init__(
        self,
        artifact: Artifact,
        precision: str = "fp32",
        batch_size: int = DEFAULT_BATCH_SIZE,
        use_gpu: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        if precision not in PRECISIONS:
            raise BackendUnavailable(
                f"onnxruntime: unknown precision {precision!r}; choose "
                f"one of {', '.join(PRECISIONS)}"
            )
        precision = "fp32" if precision == "auto" else precision
        available = set(ort.get_available_providers())
        providers = [
            p for p in _GPU_PROVIDERS if use_gpu and precision == "fp32" and p in available
        ]
        providers.append("CPUExecutionProvider")
        graph = artifact.onnx_path
        if precision == "int8":
            graph = quantized_graph(artifact, ort.__version__, cache_dir or default_cache_dir())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
        active = self.session.get_providers()
        device = "cuda" if active[0] in _GPU_PROVIDERS else "cpu"
        super().__init__(artifact, precision, device, batch_size)
        self.providers = active

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return np.asarray(out)

    def close(self) -> None:
        del self.session

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}


def quantized_graph(artifact: Artifact, ort_version: str, cache_dir: Path) -> Path:
    """The artifact's graph, shape-inferred, optimised and dynamically quantised to int8;
    built once per (graph, onnxruntime version) and cached."""
    key = hashlib.sha256(
        f"{artifact.card.files[ONNX_FILE]}\n{ort_version}\nint8-dynamic".encode()
    ).hexdigest()
    path = cache_dir / f"{key}.int8.onnx"
    if path.is_file():
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(str(artifact.onnx_path), str(prepared))
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
            quantized.replace(path)
    except Exception as exc:
        raise BackendError(f"onnxruntime could not quantise {artifact.onnx_path}: {exc}") from exc
    return path
