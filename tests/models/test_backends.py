"""Backends: the template-method contract, parity between engines, and ``auto``."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import ONNX_FILE, Artifact
from models.backends import available_backends, create_backend
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.tensorrt_backend import TensorRTBackend, engine_cache_key
from models.backends.torch_backend import TorchBackend, cpu_has_bf16
from models.errors import BackendError, BackendUnavailable

#: fp32 PyTorch and fp32 ONNX Runtime differ only by kernel summation order.
PARITY_ATOL = 1e-5


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def _openvino_skip_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install '.[openvino]')"
    return None


FP32_ENGINES = [
    "torch",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(
            _openvino_skip_reason() is not None, reason=str(_openvino_skip_reason())
        ),
    ),
]


@pytest.mark.parametrize("name", FP32_ENGINES)
def test_fp32_engines_agree_with_onnxruntime(tiny_artifact: Artifact, name: str) -> None:
    x = batch(7)
    reference = OnnxRuntimeBackend(tiny_artifact, use_gpu=False).infer(x)
    engine = create_backend(tiny_artifact, name, "fp32")
    assert engine.device == "cpu"
    np.testing.assert_allclose(engine.infer(x), reference, atol=PARITY_ATOL)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 instructions")
def test_torch_bf16_passes_the_golden_smoke_test(tiny_artifact: Artifact) -> None:
    backend = TorchBackend(tiny_artifact, "bf16", device="cpu")
    assert backend.smoke_test() <= tiny_artifact.card.golden.atol


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_every_cpu_backend_passes_the_golden_smoke_test(tiny_artifact: Artifact, name: str) -> None:
    assert create_backend(tiny_artifact, name, "fp32").smoke_test() < 1e-4


def test_batches_larger_than_batch_size_are_chunked(tiny_artifact: Artifact) -> None:
    whole = TorchBackend(tiny_artifact, "fp32", device="cpu", batch_size=64).infer(batch(10))
    chunked = TorchBackend(tiny_artifact, "fp32", device="cpu", batch_size=3).infer(batch(10))
    np.testing.assert_allclose(whole, chunked, atol=1e-6)


def test_wrong_dtype_is_refused(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendError, match="float32 numpy array, got float64"):
        TorchBackend(tiny_artifact, "fp32").infer(batch(2).astype(np.float64))


def test_wrong_shape_is_refused(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendError, match=r"input shape \(2, 3, 16, 16\) is not \(N>=1, 3, 32"):
        OnnxRuntimeBackend(tiny_artifact).infer(np.zeros((2, 3, 16, 16), np.float32))


def test_empty_batch_is_refused(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendError, match="N>=1"):
        TorchBackend(tiny_artifact, "fp32").infer(np.zeros((0, 3, 32, 32), np.float32))


def test_library_errors_are_wrapped(tiny_artifact: Artifact) -> None:
    class Broken(TorchBackend):
        def _infer(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("kernel exploded")

    with pytest.raises(BackendError, match="torch inference failed: kernel exploded") as info:
        Broken(tiny_artifact, "fp32").infer(batch(1))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_auto_picks_a_measured_backend_and_says_which(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    backend = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    info = backend.describe()
    rates = info["auto"]["rates"]
    assert rates[f"{info['backend']}/{info['precision']}"] == max(rates.values())
    assert info["auto"]["source"] == "measured"


@pytest.mark.skipif(_openvino_skip_reason() is not None, reason=str(_openvino_skip_reason()))
def test_auto_includes_openvino_where_installed(tiny_artifact: Artifact, tmp_path: Path) -> None:
    backend = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert backend.choice is not None
    tried = set(backend.choice.rates) | set(backend.choice.refused)
    assert "openvino/fp32" in tried
    assert "openvino" in available_backends()


def test_torch_auto_precision_resolves_to_a_concrete_one(tiny_artifact: Artifact) -> None:
    assert TorchBackend(tiny_artifact, "auto", device="cpu").precision in ("fp32", "bf16")


def test_unknown_backend_is_refused(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend 'tflite'; choose one of auto"):
        create_backend(tiny_artifact, "tflite")


def test_onnxruntime_refuses_a_precision_it_does_not_offer(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendUnavailable, match="unknown precision 'bf16'"):
        create_backend(tiny_artifact, "onnxruntime", "bf16")


def test_engine_cache_key_changes_with_every_input() -> None:
    base = ("ab" * 32, "10.3.0", "NVIDIA A2", (8, 6), "fp16", 16)
    keys = {engine_cache_key(*base)}
    for i, other in enumerate(("cd" * 32, "10.4.0", "NVIDIA L4", (8, 9), "fp32", 32)):
        changed = list(base)
        changed[i] = other
        keys.add(engine_cache_key(*changed))  # type: ignore[arg-type]
    assert len(keys) == 7
    assert engine_cache_key(*base) == engine_cache_key(*base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_tensorrt_without_a_gpu_is_unavailable(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendUnavailable):
        create_backend(tiny_artifact, "tensorrt")
    assert "tensorrt" not in available_backends()


def _tensorrt_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no NVIDIA GPU visible to torch (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install '.[gpu]')"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_tensorrt_skip_reason() is not None, reason=str(_tensorrt_skip_reason()))
def test_tensorrt_matches_onnxruntime_and_caches_its_engine(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    import tensorrt

    first = TensorRTBackend(tiny_artifact, "fp16", batch_size=8, cache_dir=tmp_path)
    assert not first.cache_hit
    x = batch(5)
    reference = OnnxRuntimeBackend(tiny_artifact, use_gpu=False).infer(x)
    np.testing.assert_allclose(first.infer(x), reference, atol=tiny_artifact.card.golden.atol)
    second = TensorRTBackend(tiny_artifact, "fp16", batch_size=8, cache_dir=tmp_path)
    assert second.cache_hit
    assert second.engine_path.name.startswith(
        engine_cache_key(
            tiny_artifact.card.files[ONNX_FILE],
            tensorrt.__version__,
            torch.cuda.get_device_name(0),
            torch.cuda.get_device_capability(0),
            "fp16",
            8,
        )
    )


@pytest.mark.skipif(_openvino_skip_reason() is not None, reason=str(_openvino_skip_reason()))
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_openvino_reduced_precisions_pass_the_golden_smoke_test(
    tiny_artifact: Artifact, tmp_path: Path, precision: str
) -> None:
    from models.backends.openvino_backend import OpenVINOBackend

    try:
        backend = OpenVINOBackend(tiny_artifact, precision, cache_dir=tmp_path)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    assert backend.precision == precision
    assert backend.smoke_test() <= tiny_artifact.card.golden.atol


@pytest.mark.skipif(_openvino_skip_reason() is not None, reason=str(_openvino_skip_reason()))
def test_openvino_caches_compiled_blobs(tiny_artifact: Artifact, tmp_path: Path) -> None:
    from models.backends.openvino_backend import OpenVINOBackend

    OpenVINOBackend(tiny_artifact, "fp32", cache_dir=tmp_path).close()
    blobs = list((tmp_path / "openvino" / "fp32").glob("*.blob"))
    assert blobs


def test_openvino_refuses_a_precision_it_does_not_offer(tiny_artifact: Artifact) -> None:
    with pytest.raises(BackendUnavailable, match="openvino"):
        create_backend(tiny_artifact, "openvino", "fp16")


#: Two OpenVINO models compiled on this thread and freed first-in first-out, then a signal
#: handled by Python on it (models.backends.signal_stack). Printed: the thread's signal stack
#: before and after, and whether the handler ran.
_SIGNAL_AFTER_TWO_MODELS = """
import gc, os, signal, sys
from pathlib import Path
from models.artifact import load_artifact
from models.backends.openvino_backend import OpenVINOBackend
from models.backends.signal_stack import current_signal_stack
import faulthandler
faulthandler.enable()
artifact, cache = load_artifact(Path(sys.argv[1])), Path(sys.argv[2])
before = current_signal_stack()
first = OpenVINOBackend(artifact, "fp32", cache_dir=cache)
second = OpenVINOBackend(artifact, "fp32", cache_dir=cache)
first.close(); del first; gc.collect()
second.close(); del second; gc.collect()
print("stack kept", current_signal_stack() == before, flush=True)
got = []
signal.signal(signal.SIGUSR1, lambda sig, frame: got.append(sig))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled", got == [signal.SIGUSR1], flush=True)
"""


@pytest.mark.skipif(_openvino_skip_reason() is not None, reason=str(_openvino_skip_reason()))
def test_openvino_models_freed_in_any_order_leave_signals_working(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    # Its own process: before the fix this signal ended the process with SIGSEGV (it ended the
    # whole test run once, in CI).
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AFTER_TWO_MODELS, str(tiny_artifact.root), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split("\n")[:2] == ["stack kept True", "handled True"]
