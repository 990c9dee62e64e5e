"""OpenVINO backend (CPU): the artifact's ONNX graph compiled for this CPU in fp32 or bf16, or
the static QDQ int8 graph (``models.backends.quantize``) on integer kernels. Compiled blobs go to
the engine cache (OpenVINO's ``CACHE_DIR``), so a second start skips graph compilation.

Throughput mode: each chunk is split across the compiled model's optimal number of infer
requests, which OpenVINO runs on parallel CPU streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend
from models.backends.quantize import int8_graph
from models.backends.signal_stack import kept_signal_stack
from models.cache import default_cache_dir
from models.errors import BackendUnavailable
from models.signature import INPUT_NAME

PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: OpenVINO's name for the precision of the ops a graph leaves in floating point.
_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVINOBackend(Backend):
    """One compiled model on the CPU plugin; ``precision="auto"`` is bf16 where the CPU has
    native bf16, else fp32. int8 keeps the remaining float ops at the same floating precision."""

    name = "openvino"

    def __init__(
        self,
        artifact: Artifact,
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable(
                "openvino is not installed (pip install '.[openvino]')"
            ) from exc
        if precision not in PRECISIONS:
            raise BackendUnavailable(
                f"openvino: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        # The CPU plugin swaps this thread's signal stack when it loads and frees it with the
        # Core (models.backends.signal_stack): without this, a signal can kill the process.
        with kept_signal_stack():
            self._load(ov.Core(), artifact, precision, batch_size, cache_dir)

    def _load(
        self,
        core: Any,
        artifact: Artifact,
        precision: str,
        batch_size: int,
        cache_dir: Path | None,
    ) -> None:
        """Resolve ``precision`` against this CPU, then compile the graph on ``core``."""
        capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if precision == "bf16" and "BF16" not in capabilities:
            raise BackendUnavailable("openvino: this CPU has no native bf16 instructions")
        if precision == "int8" and "INT8" not in capabilities:
            raise BackendUnavailable("openvino: this CPU has no int8 kernels")
        if precision == "auto":
            precision = "bf16" if "BF16" in capabilities else "fp32"
        cache = cache_dir or default_cache_dir()
        graph = artifact.onnx_path
        float_precision = precision
        if precision == "int8":
            import onnxruntime as ort

            graph = int8_graph(artifact, ort.__version__, cache)
            float_precision = "bf16" if "BF16" in capabilities else "fp32"
        super().__init__(artifact, precision, "cpu", batch_size)
        # One cache directory per precision: OpenVINO 2026.4 keyed a bf16 compile of a graph
        # like its fp32 one and loaded a blob that returned NaN.
        core.set_property({"CACHE_DIR": str(cache / "openvino" / precision)})
        self.compiled = core.compile_model(
            str(graph),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": _HINTS[float_precision],
                "PERFORMANCE_HINT": "THROUGHPUT",
            },
        )
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._infer_requests = [self.compiled.create_infer_request() for _ in range(self.requests)]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        pieces = np.array_split(batch, min(self.requests, len(batch)))
        running = list(zip(self._infer_requests, pieces, strict=False))
        for request, piece in running:
            request.start_async({INPUT_NAME: np.ascontiguousarray(piece)})
        outputs = []
        for request, _ in running:
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data))
        return np.concatenate(outputs)

    def close(self) -> None:
        self._infer_requests.clear()
        del self.compiled

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "infer_requests": self.requests}
