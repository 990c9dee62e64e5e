"""int8 graphs and the accuracy gate they must pass before ``auto`` may pick one.

``int8_graph`` quantises statically to QDQ: weights per channel, activations per tensor with
ranges calibrated on ``calibration.card_tiles``. ONNX Runtime and OpenVINO both run it on
integer kernels. It is built once per (graph, quantiser version) and cached in the engine cache.
(Dynamic quantisation, activations quantised per batch, measured slower than this on ViT-S and
was dropped: docs/BENCHMARKS.md.)
``evaluate`` compares an int8 backend against fp32 outputs on held-out tiles; a graph that drifts
past ``MIN_AGREEMENT`` / ``MIN_MACRO_F1`` is refused and the reason logged.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import ONNX_FILE, Artifact
from models.backends.calibration import CALIBRATION_SEED, CALIBRATION_TILES, card_tiles
from models.errors import BackendError
from models.signature import INPUT_NAME

#: Share of evaluation tiles whose int8 label set must equal the fp32 one.
MIN_AGREEMENT = 0.95
#: Macro-F1 of int8 labels against fp32 labels, averaged over the card's labels.
MIN_MACRO_F1 = 0.90
#: Calibration runs in chunks of this many tiles.
_CALIBRATION_BATCH = 8


def int8_graph(artifact: Artifact, ort_version: str, cache_dir: Path) -> Path:
    """The artifact's graph quantised to static QDQ int8, from the cache or built now."""
    fields = [artifact.card.files[ONNX_FILE], ort_version, "int8-static-qdq"]
    key = hashlib.sha256("\n".join(fields).encode()).hexdigest()
    path = cache_dir / f"{key}.int8.onnx"
    if path.is_file():
        return path
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(str(artifact.onnx_path), str(prepared))
            _quantize_static(artifact, prepared, quantized)
            quantized.replace(path)
    except Exception as exc:
        raise BackendError(f"onnxruntime could not quantise {artifact.onnx_path}: {exc}") from exc
    return path


def _quantize_static(artifact: Artifact, src: Path, dst: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    tiles = card_tiles(artifact, CALIBRATION_TILES, CALIBRATION_SEED)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._chunks = iter(range(0, len(tiles), _CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._chunks, None)
            if start is None:
                return None
            return {INPUT_NAME: tiles[start : start + _CALIBRATION_BATCH]}

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


@dataclass(frozen=True)
class Evaluation:
    """int8 against fp32 on the evaluation tiles; ``accepted`` is the gate's verdict."""

    tiles: int
    agreement: float
    macro_f1: float
    max_abs_diff: float
    accepted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_sets(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, labels) booleans: a label is reported at or over its threshold."""
    return probs >= thresholds[None, :]


def macro_f1(reference: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over labels of F1 of ``predicted`` against ``reference`` (boolean (N, labels)); a
    label neither side ever reports counts as perfect agreement."""
    scores = []
    for ref, pred in zip(reference.T, predicted.T, strict=True):
        tp = int(np.sum(ref & pred))
        denominator = int(np.sum(ref)) + int(np.sum(pred))
        scores.append(1.0 if denominator == 0 else 2.0 * tp / denominator)
    return float(np.mean(scores))


def evaluate(reference: np.ndarray, candidate: np.ndarray, thresholds: np.ndarray) -> Evaluation:
    """The gate: label-set agreement and macro-F1 of ``candidate`` probabilities against the
    fp32 ``reference`` probabilities, both (N, labels)."""
    ref, cand = label_sets(reference, thresholds), label_sets(candidate, thresholds)
    agreement = float(np.mean(np.all(ref == cand, axis=1)))
    f1 = macro_f1(ref, cand)
    diff = float(np.max(np.abs(reference - candidate)))
    problems = []
    if agreement < MIN_AGREEMENT:
        problems.append(f"label sets agree on {agreement:.1%} of tiles (< {MIN_AGREEMENT:.0%})")
    if f1 < MIN_MACRO_F1:
        problems.append(f"macro-F1 {f1:.3f} against fp32 (< {MIN_MACRO_F1})")
    reason = "; ".join(problems) or (
        f"within tolerance: agreement {agreement:.1%}, macro-F1 {f1:.3f}"
    )
    return Evaluation(
        len(ref), round(agreement, 4), round(f1, 4), round(diff, 5), not problems, reason
    )
