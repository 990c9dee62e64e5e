"""The template-method base every backend derives from.

``infer`` is the one public entry: it validates the batch, splits it into chunks of at most
``batch_size``, calls the subclass's ``_infer`` on each and checks what comes back; anything a
backend library raises becomes a ``BackendError`` with its cause attached.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from appliance.errors import SpokeError
from models.artifact import Artifact
from models.errors import BackendError

if TYPE_CHECKING:
    from models.backends.choice import EngineChoice

DEFAULT_BATCH_SIZE = 16


class Backend(ABC):
    """Runs an artifact's model: (N, C, H, W) float32 in, (N, labels) probabilities out.

    One caller at a time: a TensorRT execution context is not re-entrant, so a server should
    feed a backend from a single worker (which is also what lets it batch across requests).
    """

    name: ClassVar[str]

    def __init__(
        self, artifact: Artifact, precision: str, device: str, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        if batch_size < 1:
            raise BackendError(f"batch_size must be positive, not {batch_size}")
        cfg = artifact.card.config
        self.artifact = artifact
        self.precision = precision
        self.device = device
        self.batch_size = batch_size
        self.input_shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.num_classes = cfg.num_classes
        #: Filled by ``create_backend("auto")``: what it measured (or read from the cache).
        self.choice: EngineChoice | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed batch of any size (see ``Preprocessing.normalize``).

        Callers may pool tiles from several images into one call: the batch is cut into chunks of
        ``batch_size`` here, so throughput does not depend on how requests happen to arrive.
        """
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise BackendError(
                f"{self.name}: input must be a float32 numpy array, got "
                f"{getattr(batch, 'dtype', type(batch).__name__)}"
            )
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape or batch.shape[0] < 1:
            raise BackendError(
                f"{self.name}: input shape {batch.shape} is not "
                f"(N>=1, {', '.join(map(str, self.input_shape))})"
            )
        outputs = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(batch[start : start + self.batch_size])
            try:
                out = self._infer(chunk)
            except SpokeError:
                raise
            except Exception as exc:
                raise BackendError(f"{self.name} inference failed: {exc}") from exc
            if out.shape != (chunk.shape[0], self.num_classes):
                raise BackendError(
                    f"{self.name}: output shape {out.shape} is not "
                    f"({chunk.shape[0]}, {self.num_classes})"
                )
            outputs.append(out.astype(np.float32, copy=False))
        return np.concatenate(outputs)

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one contiguous chunk of at most ``batch_size`` inputs; return (N, labels)."""

    @abstractmethod
    def close(self) -> None:
        """Release sessions and device memory; the backend is unusable afterwards."""

    def describe(self) -> dict[str, Any]:
        """What a status page or a log line says about this backend."""
        info: dict[str, Any] = {
            "backend": self.name,
            "precision": self.precision,
            "device": self.device,
            "batch_size": self.batch_size,
        }
        if self.choice is not None:
            info["auto"] = self.choice.to_dict()
        return info

    def smoke_test(self) -> float:
        """Run the card's golden input and compare; raises ``ArtifactError`` on a mismatch."""
        return self.artifact.check_golden(self.infer(self.artifact.golden_batch()))


def probe_throughput(backend: Backend, batch: int, repeats: int = 3) -> float:
    """Inputs per second on a golden-derived batch, best of ``repeats`` after one warm-up.

    Deliberately short: it ranks backends on this machine, it is not a benchmark.
    """
    golden = backend.artifact.golden_batch()
    x = np.ascontiguousarray(np.resize(golden, (batch, *golden.shape[1:])))
    backend.infer(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend.infer(x)
        best = min(best, time.perf_counter() - start)
    return batch / best
