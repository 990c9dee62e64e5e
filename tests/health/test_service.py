"""HealthService: real psutil, the FAKE NVML, a publish callback that records what it gets."""

import asyncio
import logging
import threading
import time
from pathlib import Path

import pynvml
import pytest

from appliance.config import HealthSection
from appliance.health import ActiveModel, AlertEvent, DaemonFacts, HealthSnapshot
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from daemon.health.service import FactsFn, HealthService
from tests.health.fake_nvml import FakeNvml

FAST = HealthSection(interval_s=0.05)
Published = tuple[HealthSnapshot, list[AlertEvent]]


class Recorder:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Published] = asyncio.Queue()

    async def __call__(self, snapshot: HealthSnapshot, events: list[AlertEvent]) -> None:
        self.queue.put_nowait((snapshot, events))

    async def next(self) -> Published:
        return await asyncio.wait_for(self.queue.get(), 5)


def in_touch_without_a_model() -> DaemonFacts:
    """The hub heard from just now, no model: a hub never reached counts from the process start,
    so with DaemonFacts() these tests raised hub_unreachable once pytest had run 15 min (CI)."""
    return DaemonFacts(last_hub_contact_s=time.time())


def service(
    publish: Recorder, fake: FakeNvml | None = None, facts: FactsFn = in_touch_without_a_model,
    alerts_path: Path | None = None,
) -> HealthService:
    sampler = Sampler(gpu=NvmlReader(fake or FakeNvml()))
    return HealthService(FAST, publish, sampler=sampler, facts=facts, alerts_path=alerts_path)


async def test_publishes_a_snapshot_every_interval() -> None:
    recorder = Recorder()
    health = service(recorder)
    await health.start()
    try:
        first, _ = await recorder.next()
        second, _ = await recorder.next()
    finally:
        await health.stop()
    assert second.taken_at_s > first.taken_at_s
    assert health.latest is not None


async def test_snapshot_carries_the_daemon_facts() -> None:
    facts = DaemonFacts(
        active_model=ActiveModel(name="vit", version="3"), queue_depths={"tiles": 4}
    )
    health = service(Recorder(), facts=lambda: facts)
    snapshot = await health.collect_now()
    assert snapshot.daemon == facts


async def test_first_cycle_raises_no_active_model_once() -> None:
    recorder = Recorder()
    health = service(recorder)
    await health.start()
    try:
        _, first = await recorder.next()
        _, second = await recorder.next()
    finally:
        await health.stop()
    assert [(e.alert, e.state) for e in first] == [("no_active_model", "raised")]
    assert second == []


async def _first_cycle(health: HealthService, recorder: Recorder) -> list[AlertEvent]:
    await health.start()
    try:
        _, events = await recorder.next()
    finally:
        await health.stop()
    return events


async def test_a_restart_does_not_raise_again_an_alert_still_active(tmp_path: Path) -> None:
    """Fault scenarios "hub killed" and "power cut": the daemon restarts while an alert is
    raised. The new process knows it is raised (and says so in /metrics), so the hub gets no
    second "raised"; once the condition ends, one "cleared"."""
    path = tmp_path / "alerts.json"
    first = Recorder()
    events = await _first_cycle(service(first, alerts_path=path), first)
    assert [(e.alert, e.state) for e in events] == [("no_active_model", "raised")]

    again = Recorder()
    restarted = service(again, alerts_path=path)
    assert restarted.alerts.active == [("no_active_model", "model")]
    assert b'spoke_health_alert_active{alert="no_active_model"' in restarted.metrics.exposition()[0]
    assert await _first_cycle(restarted, again) == []

    serving = DaemonFacts(active_model=ActiveModel(name="vit", version="1"),
                          last_hub_contact_s=time.time())
    later = Recorder()
    events = await _first_cycle(service(later, facts=lambda: serving, alerts_path=path), later)
    assert [(e.alert, e.state) for e in events] == [("no_active_model", "cleared")]
    assert service(Recorder(), alerts_path=path).alerts.active == []


def test_unreadable_alert_state_starts_with_none_raised(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text("{not json")
    assert service(Recorder(), alerts_path=path).alerts.active == []


async def test_nvml_lost_mid_run_is_a_fault_and_an_alert_not_a_crash() -> None:
    recorder, fake = Recorder(), FakeNvml()
    health = service(recorder, fake)
    await health.start()
    try:
        await recorder.next()
        fake.break_with(pynvml.NVML_ERROR_GPU_IS_LOST)
        snapshot, events = await recorder.next()
        after, _ = await recorder.next()
    finally:
        await health.stop()
    assert snapshot.gpu.status == "fault"
    assert "gpu: NVML lost: GPU is lost" in snapshot.faults
    assert ("nvml_lost", "raised") in [(e.alert, e.state) for e in events]
    assert after.gpu.status == "fault"


async def test_a_failing_publish_does_not_stop_collection() -> None:
    calls: list[int] = []
    done = asyncio.Event()

    async def flaky(snapshot: HealthSnapshot, events: list[AlertEvent]) -> None:
        calls.append(1)
        if len(calls) >= 3:
            done.set()
        raise ConnectionError("broker gone")

    health = HealthService(FAST, flaky, sampler=Sampler(gpu=NvmlReader(FakeNvml())))
    await health.start()
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await health.stop()


async def test_a_publish_slower_than_the_interval_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lossy link makes a publish outlast its interval: the cycle moves on, and the log says
    so in one line per cycle instead of a traceback (seen every second in the fault suite)."""
    started = asyncio.Event()

    async def stuck(snapshot: HealthSnapshot, events: list[AlertEvent]) -> None:
        started.set()
        await asyncio.sleep(3600)

    health = HealthService(FAST, stuck, sampler=Sampler(gpu=NvmlReader(FakeNvml())))
    with caplog.at_level(logging.WARNING, logger="daemon.health.service"):
        await health.start()
        try:
            await asyncio.wait_for(started.wait(), 5)
            await health.run_cycle()
        finally:
            await health.stop()
    slow = [r for r in caplog.records if "not published within the interval" in r.getMessage()]
    assert slow, caplog.text
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in slow)
    assert "publishing health failed" not in caplog.text
    assert health.crash is None


async def test_a_failing_collection_is_skipped_not_fatal() -> None:
    recorder = Recorder()
    failures = iter([RuntimeError("state not ready")])

    def facts() -> DaemonFacts:
        for exc in failures:
            raise exc
        return DaemonFacts()

    health = service(recorder, facts=facts)
    await health.start()
    try:
        await recorder.next()
    finally:
        await health.stop()
    assert health.crash is None


async def test_stop_shuts_nvml_down() -> None:
    fake = FakeNvml()
    health = service(Recorder(), fake)
    await health.start()
    await health.collect_now()
    await health.stop()
    assert fake.initialised == 0


async def test_without_a_gpu_the_section_says_so() -> None:
    health = service(Recorder(), FakeNvml(gpus=[]))
    snapshot = await health.collect_now()
    assert (snapshot.gpu.status, snapshot.gpu.message) == ("absent", "no NVIDIA GPU")
    assert snapshot.faults == []


async def test_stop_waits_for_a_read_in_progress_before_closing_nvml() -> None:
    calls: list[str] = []
    reading = threading.Event()

    class SlowNvml(FakeNvml):
        def nvmlDeviceGetName(self, handle: object) -> str:
            reading.set()
            time.sleep(0.2)
            calls.append("read")
            return super().nvmlDeviceGetName(handle)

        def nvmlShutdown(self) -> None:
            calls.append("shutdown")
            super().nvmlShutdown()

    health = service(Recorder(), SlowNvml())
    await health.start()
    await asyncio.to_thread(reading.wait, 5)
    await health.stop()
    assert calls[-2:] == ["read", "shutdown"]
