"""What an exported graph takes and gives, in a module light enough for any caller to import
(reading it from a graph needs ``onnx``; see ``models.export.check_onnx``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The names an exported graph gives its one input and one output.
INPUT_NAME = "input"
OUTPUT_NAME = "probs"


@dataclass(frozen=True)
class GraphSignature:
    """The one input and one output of an exported model; ``None`` is a dynamic dimension."""

    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSignature:
        return cls(tuple(data["input_shape"]), tuple(data["output_shape"]))
