"""The torch backend on a real NVIDIA GPU: bf16, CUDA graphs and parity with the CPU reference.

Marked ``gpu``; each skips with the reason where torch sees no CUDA device (scripts/gpu_check.sh
runs them on the lent H200).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import Artifact
from models.backends import create_backend
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.torch_backend import TorchBackend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no NVIDIA GPU visible to torch (torch.cuda.is_available() is False)",
    ),
]

#: fp32 on the GPU may use TF32 matmuls; probabilities in 0..1 stay this close to the CPU.
CUDA_FP32_ATOL = 2e-3


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_torch_cuda_fp32_agrees_with_onnxruntime_on_the_cpu(tiny_artifact: Artifact) -> None:
    x = batch(9)
    reference = OnnxRuntimeBackend(tiny_artifact, use_gpu=False).infer(x)
    cuda = TorchBackend(tiny_artifact, "fp32", device="cuda")
    assert cuda.device == "cuda"
    np.testing.assert_allclose(cuda.infer(x), reference, atol=CUDA_FP32_ATOL)


def test_torch_cuda_bf16_passes_the_golden_smoke_test(tiny_artifact: Artifact) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16")
    backend = TorchBackend(tiny_artifact, "bf16", device="cuda")
    assert backend.smoke_test() <= tiny_artifact.card.golden.atol


def test_cuda_graph_replay_matches_eager(tiny_artifact: Artifact) -> None:
    x = batch(16)
    eager = TorchBackend(tiny_artifact, "bf16", device="cuda", batch_size=8)
    graphed = TorchBackend(tiny_artifact, "bf16", device="cuda", batch_size=8, cuda_graphs=True)
    first, second = graphed.infer(x), graphed.infer(batch(16, seed=1))
    np.testing.assert_allclose(first, eager.infer(x), atol=1e-3)
    np.testing.assert_allclose(second, eager.infer(batch(16, seed=1)), atol=1e-3)
    # a short last chunk runs eagerly beside the captured graph
    np.testing.assert_allclose(graphed.infer(x[:5]), eager.infer(x[:5]), atol=1e-3)


def test_auto_on_a_gpu_remembers_its_pick(tiny_artifact: Artifact, tmp_path: Path) -> None:
    cache = tmp_path
    first = create_backend(tiny_artifact, "auto", cache_dir=cache)
    assert first.choice is not None and first.choice.source == "measured"
    second = create_backend(tiny_artifact, "auto", cache_dir=cache)
    assert second.choice is not None and second.choice.source == "cache"
    assert second.choice.pick == first.choice.pick
