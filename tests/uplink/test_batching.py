"""Dynamic batching across requests, and an event loop that keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from daemon.uplink.batcher import TileBatcher
from daemon.uplink.provider import StaticModel
from models.artifact import Artifact
from models.backends import create_backend
from tests.uplink.conftest import Uplink, image_bytes


@dataclass
class FakeBackend:
    name: str = "fake"
    batches: list[int] = field(default_factory=list)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        return batch[:, :1, 0, 0].copy()  # each tile's first pixel: results stay traceable


class _Pre:
    @staticmethod
    def normalize(tiles: np.ndarray) -> np.ndarray:
        return tiles.transpose(0, 3, 1, 2).astype(np.float32)


@dataclass(eq=False)
class FakeModel:
    backend: FakeBackend
    name: str = "fake"
    version: str = "0"

    @property
    def artifact(self) -> Any:
        class A:
            class card:
                preprocessing = _Pre

        return A


def _tiles(n: int, start: int) -> np.ndarray:
    tiles = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    tiles[:, 0, 0, 0] = np.arange(start, start + n)
    return tiles


async def test_tiles_of_concurrent_images_share_one_batch() -> None:
    model = FakeModel(FakeBackend())
    batcher = TileBatcher(max_batch=16, max_wait_s=0.5)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.infer(model, _tiles(5, 10 * i)) for i in range(3)))
    finally:
        await batcher.stop()
    assert model.backend.batches == [15]
    for i, probs in enumerate(results):
        assert probs[:, 0].tolist() == list(range(10 * i, 10 * i + 5))


async def test_a_large_image_is_cut_into_batches_of_the_maximum_size() -> None:
    model = FakeModel(FakeBackend())
    batcher = TileBatcher(max_batch=16, max_wait_s=0.0)
    batcher.start()
    try:
        probs = await batcher.infer(model, _tiles(40, 0))
    finally:
        await batcher.stop()
    assert model.backend.batches == [16, 16, 8]
    assert probs[:, 0].tolist() == list(range(40))


async def test_a_lone_image_waits_at_most_max_wait() -> None:
    model = FakeModel(FakeBackend())
    batcher = TileBatcher(max_batch=64, max_wait_s=0.05)
    batcher.start()
    try:
        start = time.monotonic()
        await batcher.infer(model, _tiles(3, 0))
        assert time.monotonic() - start < 5  # generous: it does not wait for a full batch
    finally:
        await batcher.stop()
    assert model.backend.batches == [3]


async def test_tiles_of_different_models_never_share_a_batch() -> None:
    a, b = FakeModel(FakeBackend()), FakeModel(FakeBackend())
    batcher = TileBatcher(max_batch=16, max_wait_s=0.2)
    batcher.start()
    try:
        await asyncio.gather(
            batcher.infer(a, _tiles(4, 0)),
            batcher.infer(b, _tiles(4, 0)),
            batcher.infer(a, _tiles(4, 0)),
        )
    finally:
        await batcher.stop()
    assert a.backend.batches == [8] and b.backend.batches == [4]


class BusyBackend:
    """The real torch backend plus heavy torch work per batch: inference that fills the CPU
    (torch releases the GIL while it computes, as the real big models do)."""

    def __init__(self, inner: Any) -> None:
        import torch

        self.inner = inner
        self.name = inner.name
        self._m = torch.randn(768, 768)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        for _ in range(8):
            self._m = (self._m @ self._m).clamp(-1, 1)
        result: np.ndarray = self.inner.infer(batch)
        return result

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
async def test_healthz_answers_within_100_ms_while_inference_saturates_the_cpu(
    make_uplink: Any, tiny_artifact: Artifact
) -> None:
    provider = StaticModel.of(tiny_artifact, create_backend(tiny_artifact, "torch"))
    assert provider.model is not None
    provider.model.backend = BusyBackend(provider.model.backend)  # type: ignore[assignment]
    uplink: Uplink = await make_uplink(provider=provider, max_batch_tiles=8, workers=2)
    ids = []
    for seed in range(4):
        data = image_bytes(400, 300, seed=seed, fmt="JPEG")
        body = await (await uplink.post(data, "image/jpeg")).json()
        ids.append(body["id"])
    latencies = []
    for _ in range(20):
        start = time.perf_counter()
        resp = await uplink.client.get("/healthz")
        latencies.append(time.perf_counter() - start)
        assert resp.status == 200
        await asyncio.sleep(0.05)
    still_running = await uplink.service.query("pending_count")
    assert still_running > 0, "inference finished before the probes: not a saturation test"
    # Generous for a shared machine: 19 of 20 probes within the 100 ms rule, none past 0.5 s.
    assert sum(t < 0.1 for t in latencies) >= 19, latencies
    assert max(latencies) < 0.5, latencies
