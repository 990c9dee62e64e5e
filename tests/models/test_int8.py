"""int8 that keeps accuracy: static QDQ graphs, and the gate that refuses one that drifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models.artifact import Artifact, write_artifact
from models.backends import create_backend
from models.backends.calibration import generated_tiles
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.quantize import MIN_AGREEMENT, evaluate, int8_graph, macro_f1
from models.config import CODEBRIM_LABELS, tiny_config
from models.preprocess import Preprocessing
from models.vit import build_model


def test_static_int8_graph_is_qdq_and_cached(tiny_artifact: Artifact, tmp_path: Path) -> None:
    import onnxruntime

    path = int8_graph(tiny_artifact, onnxruntime.__version__, tmp_path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    mtime = path.stat().st_mtime_ns
    assert int8_graph(tiny_artifact, onnxruntime.__version__, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_int8_graph_passes_the_golden_smoke_test(tiny_artifact: Artifact, tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(tiny_artifact, "int8", cache_dir=tmp_path)
    assert backend.smoke_test() <= tiny_artifact.card.golden.atol


def test_generated_tiles_are_reproducible_and_varied() -> None:
    a, b = generated_tiles(6, 32, seed=3), generated_tiles(6, 32, seed=3)
    assert a.dtype == np.uint8 and a.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert len({t.tobytes() for t in a}) == 6


def test_gate_accepts_identical_and_refuses_flipped_labels() -> None:
    thresholds = np.array([0.5, 0.5])
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.1]])
    same = evaluate(ref, ref + 0.01, thresholds)
    assert same.accepted and same.agreement == 1.0 and same.macro_f1 == 1.0
    flipped = evaluate(ref, 1.0 - ref, thresholds)
    assert not flipped.accepted
    assert flipped.agreement == 0.0
    assert f"(< {MIN_AGREEMENT:.0%})" in flipped.reason


def test_macro_f1_counts_each_label_equally() -> None:
    ref = np.array([[True, False], [True, False], [False, False]])
    pred = np.array([[True, False], [False, False], [False, True]])
    # label 0: tp 1, |ref| 2, |pred| 1 -> 2/3; label 1: tp 0, |ref| 0, |pred| 1 -> 0
    assert macro_f1(ref, pred) == pytest.approx((2 / 3 + 0.0) / 2)


def drifting_artifact(root: Path) -> Artifact:
    """A model whose head input has one large channel that carries no signal: per-tensor int8
    activations spend their range on it and round the informative channels coarsely. Its int8
    graph still passes the golden smoke test, but with thresholds at fp32's median per label
    (tiles close to the decision, as in a weakly trained model) the label sets drift."""
    cfg = tiny_config()
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        model.norm.weight[0] = 100.0
        model.head.weight[:, 0] = 0.0
    x = torch.from_numpy(Preprocessing(cfg.img_size).normalize(generated_tiles(64, 32, seed=2)))
    with torch.inference_mode():
        probs = torch.sigmoid(model.eval()(x)).numpy()
    medians = np.median(probs, axis=0)
    thresholds = {lab: float(m) for lab, m in zip(CODEBRIM_LABELS, medians, strict=True)}
    return write_artifact(model, root, name="drifty", version="0.1.0", thresholds=thresholds)


def test_auto_refuses_a_drifting_int8_graph_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = drifting_artifact(tmp_path / "drifty")
    OnnxRuntimeBackend(artifact, "int8", cache_dir=tmp_path / "cache").smoke_test()
    with caplog.at_level("WARNING", logger="models.backends.select"):
        backend = create_backend(artifact, "auto", cache_dir=tmp_path / "cache")
    assert backend.choice is not None
    assert "int8" not in backend.precision
    evaluation = backend.choice.evaluations["onnxruntime/int8"]
    assert not evaluation["accepted"]
    assert "onnxruntime/int8" not in backend.choice.rates
    assert backend.choice.refused["onnxruntime/int8"].startswith("drifts from fp32: label sets")
    assert "onnxruntime/int8 refused, drifts from fp32" in caplog.text
    # the verdict is kept with the pick, so the next process neither re-evaluates nor picks int8
    again = create_backend(artifact, "auto", cache_dir=tmp_path / "cache")
    assert again.choice is not None and again.choice.source == "cache"
    assert again.choice.evaluations["onnxruntime/int8"] == evaluation
