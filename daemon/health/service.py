"""The health service: collect every ``interval_s``, update metrics, evaluate alerts, publish.

Collection runs in one dedicated worker thread because psutil and NVML calls block; a single
thread also serialises every NVML call, so ``stop()`` can never shut NVML down under a read
still running for a cancelled cycle. Publishing is an injected coroutine (the hub link passes
one that publishes on MQTT), so this service knows nothing about MQTT. A failed collection or
a failed publish is logged and the next cycle runs: health must never take the daemon down.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance.config import HealthSection
from appliance.health import AlertEvent, DaemonFacts, HealthSnapshot
from appliance.service import TaskGroupService
from daemon.health.alerts import AlertEvaluator, load_active, save_active
from daemon.health.metrics import DaemonMetrics
from daemon.health.sampler import Sampler

log = logging.getLogger(__name__)

# Alert transitions are handed over exactly once: a publish function should put them in the
# durable outbox before anything that can fail or be cancelled (the snapshot itself is
# best-effort; the next one supersedes it).
PublishFn = Callable[[HealthSnapshot, list[AlertEvent]], Awaitable[None]]
# Called on the event loop each cycle; must be quick and must not block.
FactsFn = Callable[[], DaemonFacts]


class HealthService(TaskGroupService):
    name = "health"

    def __init__(
        self,
        config: HealthSection,
        publish: PublishFn,
        *,
        metrics: DaemonMetrics | None = None,
        facts: FactsFn = DaemonFacts,
        sampler: Sampler | None = None,
        alerts_path: Path | None = None,
    ) -> None:
        """``alerts_path``: where raised alerts are kept across restarts (none: memory only)."""
        super().__init__()
        self.config = config
        self.metrics = metrics or DaemonMetrics()
        self._alerts_path = alerts_path
        self.alerts = AlertEvaluator(config, load_active(alerts_path) if alerts_path else ())
        self.metrics.restore_alerts(self.alerts.active)
        self._publish = publish
        self._facts = facts
        self._sampler = sampler or Sampler()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self.latest: HealthSnapshot | None = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._sampler.gpu.open)
        self.spawn(self._run(), "collect")

    async def stop(self) -> None:
        await self.cancel_tasks()
        # Queued behind any read still in the worker, so NVML is closed after it finishes.
        await asyncio.get_running_loop().run_in_executor(self._worker, self._sampler.close)
        self._worker.shutdown(wait=False)

    async def collect_now(self) -> HealthSnapshot:
        """A fresh snapshot (for the ``health`` command too); updates ``latest`` and metrics.

        Alerts are evaluated only on the periodic cycle, so "clear after N samples" keeps
        meaning N intervals however often someone asks.
        """
        facts = self._facts()
        loop = asyncio.get_running_loop()
        snapshot = await loop.run_in_executor(self._worker, self._sampler.sample, facts)
        self.latest = snapshot
        self.metrics.update_from_snapshot(snapshot)
        return snapshot

    async def run_cycle(self) -> list[AlertEvent]:
        """Collect, evaluate and publish once; returns the alert transitions.

        A publish still running after one interval is cancelled: a stuck link must not stall
        collection, and the next snapshot supersedes this one anyway.
        """
        snapshot = await self.collect_now()
        events = self.alerts.evaluate(snapshot)
        if events and self._alerts_path is not None:
            # Saved before the publish puts the transitions in the outbox: a crash between
            # the two loses them rather than repeating them on every restart.
            save_active(self._alerts_path, self.alerts.active)
        self.metrics.apply_alert_events(events)
        for event in events:
            log.warning(
                "health alert",
                extra={"alert": event.alert, "subject": event.subject, "state": event.state},
            )
        try:
            await asyncio.wait_for(self._publish(snapshot, events), self.config.interval_s)
        except TimeoutError:
            # A slow or lossy link, not a fault of ours: one line, not a traceback a second.
            log.warning("health snapshot not published within the interval; the next one "
                        "replaces it", extra={"interval_s": self.config.interval_s})
        except Exception:
            log.exception("publishing health failed")
        return events

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_cycle()
            except Exception:
                log.exception("health collection failed")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.config.interval_s - elapsed))
