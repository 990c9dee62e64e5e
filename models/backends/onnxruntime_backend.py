"""ONNX Runtime backend: the TensorRT and CUDA execution providers when this build has them and a
GPU is present, otherwise the CPU provider."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend
from models.errors import BackendUnavailable
from models.export import INPUT_NAME, OUTPUT_NAME

#: Preference order; ONNX Runtime falls back down the list per node.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` with every graph optimisation on; fp32 (the graph's precision),
    except inside the TensorRT provider which may use FP16."""

    name = "onnxruntime"

    def __init__(self, artifact: Artifact, precision: str = "fp32",
                 batch_size: int = DEFAULT_BATCH_SIZE, use_gpu: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        if precision not in ("auto", "fp32"):
            raise BackendUnavailable(f"onnxruntime runs the fp32 graph, not {precision}")
        available = set(ort.get_available_providers())
        providers = [p for p in _GPU_PROVIDERS if use_gpu and p in available]
        providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(artifact.onnx_path), sess_options=opts,
                                            providers=providers)
        active = self.session.get_providers()
        device = "cuda" if active[0] in _GPU_PROVIDERS else "cpu"
        super().__init__(artifact, "fp32", device, batch_size)
        self.providers = active

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return np.asarray(out)

    def close(self) -> None:
        del self.session

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}
