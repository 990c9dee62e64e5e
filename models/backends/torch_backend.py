"""PyTorch backend: CPU (bf16 autocast where the CPU has bf16 instructions and it is faster) or
CUDA (fp16 autocast)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
    reduced precision on this machine and keeps the faster."""

    name = "torch"

    def __init__(
        self,
        artifact: Artifact,
        precision: str = "auto",
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch: CUDA was requested but no GPU is visible")
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"torch: unknown precision {precision!r}")
        reduced = "fp16" if device == "cuda" else "bf16"
        if precision not in ("auto", "fp32", reduced):
            raise BackendUnavailable(f"torch: {precision} is not available on {device}")
        if precision == "bf16" and not cpu_has_bf16():
            raise BackendUnavailable("torch: this CPU has no native bf16 instructions")
        super().__init__(artifact, "fp32" if precision == "auto" else precision, device, batch_size)
        self.model = Probabilities(artifact.build_model()).to(device).eval()
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
        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model(x)
        return out.float().cpu().numpy()

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            torch.cuda.empty_cache()
