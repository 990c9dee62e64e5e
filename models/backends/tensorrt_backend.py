"""TensorRT backend (TensorRT 10 Python API): builds an engine from the artifact's ONNX graph,
FP16 where the GPU supports it, caches the serialized engine, and runs it on torch CUDA tensors
(no pycuda, no compile step).

The cache key covers everything that makes an engine unusable elsewhere: the ONNX bytes, the
TensorRT version, the GPU model and compute capability, the precision and the batch profile.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.fsutil import atomic_write
from models.artifact import ONNX_FILE, Artifact
from models.backends.base import DEFAULT_BATCH_SIZE, Backend
from models.cache import default_cache_dir
from models.errors import BackendError, BackendUnavailable
from models.signature import INPUT_NAME, OUTPUT_NAME

#: FP16 tensor math needs compute capability 5.3 or newer.
_FP16_MIN_CAPABILITY = (5, 3)
_WORKSPACE_BYTES = 1 << 30


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    capability: tuple[int, int],
    precision: str,
    max_batch: int,
) -> str:
    """A file-name-safe key: change any input and the engine is rebuilt, never reused."""
    fields = [
        onnx_sha256,
        trt_version,
        gpu_name,
        f"sm{capability[0]}{capability[1]}",
        precision,
        f"b{max_batch}",
    ]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


class TensorRTBackend(Backend):
    """One engine with a dynamic-batch optimisation profile (1 .. ``batch_size``)."""

    name = "tensorrt"

    def __init__(
        self,
        artifact: Artifact,
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: Path | None = None,
        device_index: int = 0,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable("tensorrt is not installed (pip install '.[gpu]')") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt needs an NVIDIA GPU and none is visible")
        capability = torch.cuda.get_device_capability(device_index)
        if precision == "auto":
            precision = "fp16" if capability >= _FP16_MIN_CAPABILITY else "fp32"
        if precision not in ("fp16", "fp32"):
            raise BackendUnavailable(f"tensorrt: unsupported precision {precision!r}")
        super().__init__(artifact, precision, f"cuda:{device_index}", batch_size)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._torch_device = torch.device("cuda", device_index)
        key = engine_cache_key(
            artifact.card.files[ONNX_FILE],
            trt.__version__,
            torch.cuda.get_device_name(device_index),
            capability,
            precision,
            batch_size,
        )
        self.engine_path = (cache_dir or default_cache_dir()) / f"{key}.engine"
        self.cache_hit = self.engine_path.is_file()
        if not self.cache_hit:
            atomic_write(self.engine_path, self._build())
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"tensorrt could not deserialize {self.engine_path}")
        self.context = self.engine.create_execution_context()
        self._out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(OUTPUT_NAME))

    def _build(self) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(self.artifact.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"tensorrt could not parse {self.artifact.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        c, h, w = self.input_shape
        profile.set_shape(
            INPUT_NAME, (1, c, h, w), (self.batch_size, c, h, w), (self.batch_size, c, h, w)
        )
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError("tensorrt engine build failed (see the TensorRT log above)")
        return bytes(serialized)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(batch).to(self._torch_device)
        out = torch.empty(
            (batch.shape[0], self.num_classes), dtype=self._out_dtype, device=self._torch_device
        )
        self.context.set_input_shape(INPUT_NAME, tuple(inp.shape))
        self.context.set_tensor_address(INPUT_NAME, inp.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self._torch_device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError("tensorrt execute_async_v3 reported failure")
        stream.synchronize()
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "engine": str(self.engine_path),
            "engine_cache_hit": self.cache_hit,
        }

    def close(self) -> None:
        del self.context
        del self.engine
        torch.cuda.empty_cache()


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    mapping = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in mapping:
        raise BackendError(f"tensorrt output dtype {dtype} is not supported")
    return mapping[dtype]
