"""Several hub processes serve one fleet: a real PostgreSQL registry, a real mosquitto that
both hubs use as an external broker, a real appliance. Singleton work (ACL/CRL, TUF refresh,
rollout) runs in one process and moves when that one is killed."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from provisioning.leader import AdvisoryLock
from provisioning.registry import engine_url
from tests.support import postgres
from tests.support.fleet import Appliance, free_port, wait_for
from tests.support.hubfleet import LEADS, HubFleet


def test_advisory_lock_is_held_by_one_and_freed_when_its_session_ends(
    pg_cluster: postgres.Cluster,
) -> None:
    engine = sa.create_engine(engine_url(pg_cluster.create_database("locks")))
    first, second = AdvisoryLock(engine), AdvisoryLock(engine)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire()
        assert second.held()
    finally:
        first.release()
        second.release()
        engine.dispose()


@pytest.fixture
def fleet(tmp_path: Path, pg_cluster: postgres.Cluster) -> Iterator[HubFleet]:
    f = HubFleet(tmp_path, pg_cluster.create_database(f"fleet{os.getpid()}{free_port()}"))
    yield f
    f.close()


@pytest.mark.slow
def test_singleton_work_moves_when_its_process_is_killed(fleet: HubFleet, tmp_path: Path) -> None:
    first = fleet.start_hub("hub-a")
    wait_for(lambda: LEADS in first.output(), 30, "the first hub to take the singleton work")
    second = fleet.start_hub("hub-b")
    bundle = fleet.hub.bundle(tmp_path / "site.spoke")
    appliance = Appliance(tmp_path, fleet.hub)
    appliance.start(bundle)
    try:
        device_id = appliance.wait_enrolled()
        assert LEADS not in second.output()

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        killed_at = time.time()
        wait_for(lambda: LEADS in second.output(), 30, "the singleton work to move to hub-b")

        def fresh_health() -> bool:
            return (fleet.hub.devices()[device_id]["health"]["at"] or 0) > killed_at

        wait_for(fresh_health, 30, "health stored through the surviving hub")
    finally:
        appliance.kill()
