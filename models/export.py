"""Export to ONNX (probabilities out, dynamic batch) and read back what a graph expects."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError

from models.errors import ModelError
from models.signature import INPUT_NAME, OUTPUT_NAME, GraphSignature
from models.vit import Probabilities, VisionTransformer

OPSET = 17


def export_onnx(model: VisionTransformer, path: Path) -> None:
    """Write ``model`` (with its sigmoid) as ONNX, batch dimension dynamic, then check it.

    Uses the TorchScript exporter: it needs no onnxscript and its graph of plain MatMul/Softmax
    ops parses in ONNX Runtime and TensorRT alike.
    """
    cfg = model.cfg
    dummy = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                Probabilities(model),
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    check_onnx(path)


def check_onnx(path: Path) -> GraphSignature:
    """Run onnx.checker and return the graph's input/output shapes."""
    try:
        graph_model = onnx.load(str(path))
        onnx.checker.check_model(graph_model)
    except (OSError, ValueError, DecodeError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"invalid ONNX graph {path}: {exc}") from exc
    graph = graph_model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(f"ONNX graph {path} must have exactly one input and one output")
    return GraphSignature(_shape(inputs[0]), _shape(graph.output[0]))


def _shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
