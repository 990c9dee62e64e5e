"""ONNX export round trip: onnx.checker, then ONNX Runtime agrees with PyTorch."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.config import tiny_config
from models.errors import ModelError
from models.export import check_onnx, export_onnx
from models.signature import INPUT_NAME, OUTPUT_NAME
from models.vit import build_model


def test_export_checks_and_runs_with_a_dynamic_batch(tmp_path: Path) -> None:
    model = build_model(tiny_config(), seed=0)
    export_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    sig = check_onnx(tmp_path / "m.onnx")
    assert sig.input_shape == (None, 3, 32, 32)
    assert sig.output_shape == (None, 6)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            want = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_leaves_a_training_model_in_training_mode(tmp_path: Path) -> None:
    model = build_model(tiny_config(), seed=0).train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training


def test_garbage_is_not_a_graph(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="invalid ONNX graph"):
        check_onnx(tmp_path / "m.onnx")
