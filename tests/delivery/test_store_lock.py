"""The model store's lock is a flock the event loop must never wait on nor hold across an await.

Found by the fault scenario "power cut mid model download": activation held the lock across an
``await``; the hub's retained desired state arrived meanwhile and its handler took the lock on
the loop thread, waiting for a holder that could never resume, so the daemon stopped answering
after "model prepared". These tests hold the lock elsewhere (as ``spoke models`` does from its
own process) while the reconciler activates and a desired state arrives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.delivery.store import ModelStore
from tests.delivery.conftest import Harness


class HeldElsewhere:
    """The store's lock, taken and held by another thread until ``release``."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._taken = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        with self.store.locked():
            self._taken.set()
            # A bound, so a loop that blocks on the lock (the bug) still ends the test.
            self._release.wait(20)

    def __enter__(self) -> HeldElsewhere:
        self._thread.start()
        assert self._taken.wait(10), "the helper never got the lock"
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join()

    def __exit__(self, *exc: object) -> None:
        self.release()


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never saw {what}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_desired_state_during_activation_does_not_stop_the_loop(
    harness: Harness, artifacts: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    caplog.set_level(logging.INFO, logger="daemon.delivery.service")
    svc = harness.service
    with HeldElsewhere(svc.store) as held:
        reconcile = asyncio.create_task(svc.reconcile())
        await _until(lambda: any(r.getMessage() == "model prepared" for r in caplog.records),
                     "the new model prepared")
        # The hub's retained desired state again (it comes on every reconnect).
        desired = asyncio.create_task(harness.desire("1.1.0"))
        for _ in range(10):
            await asyncio.sleep(0.02)  # the loop runs: this coroutine is still scheduled
        assert not reconcile.done() and not desired.done(), "the lock is held elsewhere"
        held.release()
    await asyncio.wait_for(asyncio.gather(reconcile, desired), 30)
    assert harness.active() == "1.1.0"
    assert svc.store.journal().probation is not None
    assert [k for k in harness.kinds() if k == "model_activated"] == ["model_activated"]


@pytest.mark.timeout(120)
async def test_a_desired_state_waits_for_the_lock_off_the_loop(harness: Harness) -> None:
    svc = harness.service
    with HeldElsewhere(svc.store) as held:
        desired = asyncio.create_task(harness.desire("1.1.0"))
        for _ in range(10):
            await asyncio.sleep(0.02)
        assert not desired.done()
        held.release()
    await asyncio.wait_for(desired, 30)
    wanted = svc.store.journal().desired_model
    assert wanted is not None and wanted.version == "1.1.0"


@pytest.mark.timeout(120)
async def test_whoever_waits_for_the_gate_reads_its_verdict_from_the_store(
    harness: Harness, artifacts: dict[str, Path]
) -> None:
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    svc = harness.service
    await svc.reconcile()
    active = svc.manager.current()
    assert active is not None and svc.gate is not None
    seen: list[str | None] = []

    async def promoter_waits() -> None:  # as the Promoter's kept() does
        await svc.gate_closed()
        seen.append(svc.store.journal().committed)

    waiter = asyncio.create_task(promoter_waits())
    await harness.settle()
    await asyncio.wait_for(waiter, 30)
    assert seen == [active.sha256]
