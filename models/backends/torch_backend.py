"""PyTorch backend: CPU (bf16 autocast where the CPU has bf16 instructions and it is faster) or
CUDA (bf16 autocast where the GPU has bf16, else fp16), optionally replaying CUDA graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from models.artifact import Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend, probe_throughput
from models.errors import BackendUnavailable
from models.vit import Probabilities

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); otherwise bf16 is
    emulated and slower than fp32."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class TorchBackend(Backend):
    """Eager PyTorch under ``inference_mode``; ``precision="auto"`` times fp32 against the
    reduced precision on this machine and keeps the faster.

    ``cuda_graphs`` (CUDA only) captures the forward pass for full chunks of ``batch_size`` once
    and replays it: no per-kernel launch cost, which matters for small models at large batches.
    """

    name = "torch"

    def __init__(
        self,
        artifact: Artifact,
        precision: str = "auto",
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cuda_graphs: bool = False,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch: CUDA was requested but no GPU is visible")
        if cuda_graphs and device != "cuda":
            raise BackendUnavailable("torch: CUDA graphs need a CUDA device")
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"torch: unknown precision {precision!r}")
        if device == "cuda":
            reduced = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            offered = {"auto", "fp32", "fp16", reduced}
        else:
            reduced, offered = "bf16", {"auto", "fp32", "bf16"}
        if precision not in offered:
            raise BackendUnavailable(f"torch: {precision} is not available on {device}")
        if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
            raise BackendUnavailable("torch: this CPU has no native bf16 instructions")
        super().__init__(artifact, "fp32" if precision == "auto" else precision, device, batch_size)
        self.model = Probabilities(artifact.build_model()).to(device).eval()
        self.cuda_graphs = cuda_graphs
        self._graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        if precision == "auto" and (device == "cuda" or cpu_has_bf16()):
            fp32_rate = probe_throughput(self, batch_size)
            self.precision = reduced
            if probe_throughput(self, batch_size) < fp32_rate:
                self.precision = "fp32"

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(self.device, dtype=dtype):
            yield

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.cuda_graphs and len(batch) == self.batch_size:
            graph, static_in, static_out = self._graph or self._capture()
            static_in.copy_(x)
            graph.replay()
            return static_out.float().cpu().numpy()
        with torch.inference_mode(), self._autocast():
            out = self.model(x)
        return out.float().cpu().numpy()

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Warm up on a side stream (as CUDA graph capture requires), then record one forward
        pass on static input and output buffers."""
        static_in = torch.zeros((self.batch_size, *self.input_shape), device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode(), self._autocast():
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode(), self._autocast():
            static_out = self.model(static_in)
        self._graph = (graph, static_in, static_out)
        return self._graph

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        self._graph = None
        del self.model
        if self.device == "cuda":
            torch.cuda.empty_cache()
