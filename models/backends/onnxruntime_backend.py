"""ONNX Runtime backend: the TensorRT and CUDA execution providers when this build has them and a
GPU is present, otherwise the CPU provider; on the CPU optionally the static QDQ int8 graph
built by ``models.backends.quantize`` and cached next to TensorRT engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend
from models.backends.quantize import int8_graph
from models.cache import default_cache_dir
from models.errors import BackendUnavailable
from models.signature import INPUT_NAME, OUTPUT_NAME

#: Preference order; ONNX Runtime falls back down the list per node.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PRECISIONS = ("auto", "fp32", "int8")


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` with every graph optimisation on. ``fp32`` runs the artifact's
    graph; ``int8`` runs its quantised copy, which the golden smoke test must still
    pass (``auto`` also holds it to ``quantize.evaluate``)."""

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
            graph = int8_graph(artifact, ort.__version__, cache_dir or default_cache_dir())
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
