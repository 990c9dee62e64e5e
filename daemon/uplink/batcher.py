"""Dynamic batching: tiles of concurrent images pooled into one backend call, off the loop.

``await batcher.infer(model, tiles)`` queues an image's uint8 tiles and returns their
probabilities. One task forms batches: it takes tiles from the oldest waiting image onwards
(only images on the same model share a batch) until ``max_batch`` tiles, waiting at most
``max_wait_s`` for more to arrive when the first batch would be short. A large image is cut
across several batches. Normalisation and ``Backend.infer`` run on one dedicated thread: the
backends are not re-entrant, and torch/onnxruntime release the GIL while they compute, so the
event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from daemon.uplink.provider import ServedModel

log = logging.getLogger(__name__)

# on_batch(backend_name, tiles, seconds): metrics hook
BatchHook = Callable[[str, int, float], None]


@dataclass
class _Job:
    model: ServedModel
    tiles: np.ndarray
    future: asyncio.Future[np.ndarray]
    taken: int = 0
    parts: list[np.ndarray] = field(default_factory=list)
    done: int = 0


class TileBatcher:
    def __init__(self, max_batch: int, max_wait_s: float,
                 on_batch: BatchHook | None = None) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="uplink-infer")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uplink:batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def infer(self, model: ServedModel, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 tiles -> (N, labels) probabilities."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(model, tiles, future))
        self._wake.set()
        return await future

    def _waiting(self, model: ServedModel) -> int:
        return sum(len(j.tiles) - j.taken for j in self._pending if j.model is model)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            model = self._pending[0].model
            deadline = loop.time() + self.max_wait_s
            while self._waiting(model) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            pieces = self._take(model)
            if not pieces:
                continue
            import numpy as np

            batch = np.concatenate([job.tiles[a:b] for job, a, b in pieces])
            try:
                probs = await loop.run_in_executor(self._executor, self._infer, model, batch)
            except Exception as exc:
                for job, _, _ in pieces:
                    if not job.future.done():
                        job.future.set_exception(exc)
                    if job in self._pending:
                        self._pending.remove(job)
                continue
            offset = 0
            for job, a, b in pieces:
                job.parts.append(probs[offset:offset + b - a])
                offset += b - a
                job.done += b - a
                if job.done == len(job.tiles) and not job.future.done():
                    job.future.set_result(np.concatenate(job.parts))

    def _take(self, model: ServedModel) -> list[tuple[_Job, int, int]]:
        pieces, room = [], self.max_batch
        for job in list(self._pending):
            if room == 0:
                break
            if job.model is not model:
                continue
            n = min(room, len(job.tiles) - job.taken)
            pieces.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            if job.taken == len(job.tiles):
                self._pending.remove(job)
        return pieces

    def _drop_abandoned(self) -> None:
        for job in [j for j in self._pending if j.future.done()]:
            self._pending.remove(job)

    def _infer(self, model: ServedModel, batch: np.ndarray) -> Any:
        start = time.perf_counter()
        probs = model.backend.infer(model.artifact.card.preprocessing.normalize(batch))
        if self.on_batch is not None:
            self.on_batch(model.backend.name, len(batch), time.perf_counter() - start)
        return probs
