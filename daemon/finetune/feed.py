"""Live job updates for server-sent-event subscribers (``GET /v1/finetune/{id}/events``).

Each subscriber has its own bounded queue: a slow reader loses updates rather than holding
up the runner. ``None`` tells a subscriber that the job has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

Update = dict[str, Any] | None
QUEUE_DEPTH = 256


class JobFeed:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Update]]] = {}

    def subscribe(self, job_id: str) -> asyncio.Queue[Update]:
        queue: asyncio.Queue[Update] = asyncio.Queue(maxsize=QUEUE_DEPTH)
        self._subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Update]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[job_id]

    def publish(self, job_id: str, item: Update) -> None:
        for queue in list(self._subscribers.get(job_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(item)
