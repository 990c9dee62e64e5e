"""The supervisor's staged shutdown: reverse order, and a stuck stop names what still runs;
a crashed background task stops the process, also from under a ``Singleton``."""

import asyncio
import logging
from pathlib import Path

import pytest

from appliance.service import Service, Supervisor, TaskGroupService
from provisioning.leader import FileLock, Singleton


class Stuck(TaskGroupService):
    """A service whose stop never returns while its worker keeps running."""

    name = "stuck"

    async def start(self) -> None:
        self.spawn(asyncio.sleep(3600), "worker")

    async def stop(self) -> None:
        await asyncio.Event().wait()


class Recorder(TaskGroupService):
    def __init__(self, name: str, stopped: list[str]) -> None:
        super().__init__()
        self.name = name
        self.stopped = stopped

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped.append(self.name)


async def test_services_stop_in_reverse_order() -> None:
    stopped: list[str] = []
    async with Supervisor() as sup:
        for name in ("store", "link", "api"):
            await sup.add(Recorder(name, stopped))
    assert stopped == ["api", "link", "store"]


async def test_a_stop_that_times_out_logs_the_tasks_still_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck = Stuck()
    with caplog.at_level(logging.ERROR, logger="appliance.service"):
        async with Supervisor(stop_timeout=0.05) as sup:
            await sup.add(stuck)
    record = next(r for r in caplog.records if r.getMessage() == "service did not stop in time")
    assert "stuck:worker" in record.still_running  # type: ignore[attr-defined]
    await stuck.cancel_tasks()


class Crashing(TaskGroupService):
    """A service whose one background task fails at once."""

    name = "crashing"

    async def start(self) -> None:
        self.spawn(self._fail(), "worker")

    async def _fail(self) -> None:
        raise RuntimeError("the worker broke")

    async def stop(self) -> None:
        await self.cancel_tasks()


async def test_a_crashed_background_task_fails_the_supervisor() -> None:
    async with Supervisor() as sup:
        await sup.add(Crashing())
        await asyncio.wait_for(sup.failed.wait(), 10)
    assert isinstance(sup.failure, RuntimeError) and str(sup.failure) == "the worker broke"


async def test_a_crash_under_a_singleton_fails_the_supervisor(tmp_path: Path) -> None:
    def work() -> list[Service]:
        return [Crashing()]

    async with Supervisor() as sup:
        await sup.add(Singleton(FileLock(tmp_path / "singleton.lock"), work, retry_s=0.05))
        await asyncio.wait_for(sup.failed.wait(), 10)
    assert str(sup.failure) == "the worker broke"


async def test_a_service_stopped_cleanly_reports_no_failure() -> None:
    stopped: list[str] = []
    async with Supervisor() as sup:
        await sup.add(Recorder("quiet", stopped))
    assert stopped == ["quiet"] and sup.failure is None and not sup.failed.is_set()
