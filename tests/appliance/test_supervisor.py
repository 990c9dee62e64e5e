"""The supervisor's staged shutdown: reverse order, and a stuck stop names what still runs."""

import asyncio
import logging

import pytest

from appliance.service import Supervisor, TaskGroupService


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
