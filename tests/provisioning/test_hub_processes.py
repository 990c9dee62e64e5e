"""Several hub processes serve one fleet: a real PostgreSQL registry, a real mosquitto that
both hubs use as an external broker, a real appliance. Singleton work (ACL/CRL, TUF refresh,
rollout, ending stopped processes' sessions) runs in one process and moves when that one is
killed."""

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from appliance import mqtt, topics
from appliance.health import DaemonFacts
from appliance.payloads import Event
from daemon.health.sampler import Sampler
from daemon.state import StateDir, load_identity
from provisioning.home import HubHome
from provisioning.leader import AdvisoryLock
from provisioning.registry import engine_url, open_registry
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


async def send_events(box: Appliance, ids: list[str]) -> None:
    """Publish as the device does from its outbox: its own certificate, its events topic."""
    ident = load_identity(StateDir(box.state_dir))
    assert ident is not None
    tls = mqtt.tls_context(ident.ca, ident.cert, ident.key)
    async with mqtt.client(ident.hub_host, ident.mqtt_port, f"{ident.device_id}-t", tls) as c:
        for event_id in ids:
            event = Event(id=event_id, kind="note", ts=time.time(), data={})
            await c.publish(topics.events(ident.device_id), event.model_dump_json(), qos=1)


@pytest.mark.slow
def test_what_the_broker_kept_for_a_killed_process_is_stored_by_another(
    fleet: HubFleet, tmp_path: Path
) -> None:
    """The broker keeps giving a dead process's persistent session its share of the shared
    subscriptions; the singleton ends that session and stores what waited in it."""
    leader = fleet.start_hub("hub-a")
    wait_for(lambda: LEADS in leader.output(), 30, "hub-a to take the singleton work")
    doomed = fleet.start_hub("hub-b")
    appliance = Appliance(tmp_path, fleet.hub)
    appliance.start(fleet.hub.bundle(tmp_path / "site.spoke"))
    try:
        device_id = appliance.wait_enrolled()
    finally:
        appliance.kill()
    registry = open_registry(HubHome(fleet.hub.home))
    try:
        # Frozen, hub-b takes its share off the broker but never stores or acknowledges it.
        doomed.proc.send_signal(signal.SIGSTOP)
        sent = [f"ev-{i}" for i in range(12)]
        asyncio.run(send_events(appliance, sent[:6]))
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
        asyncio.run(send_events(appliance, sent[6:]))

        def stored() -> bool:
            return {e["id"] for e in registry.events(device_id, "note")} == set(sent)

        wait_for(stored, 60, "every event stored, hub-b's share included")
        ended = "ended the session of a stopped hub process"
        wait_for(lambda: ended in leader.output(), 30, "hub-a to end hub-b's session")
        assert registry.hub_processes() == ["hub-a"]
    finally:
        registry.close()


def stored_health(url: str) -> tuple[set[tuple[str, float]], int]:
    """The (device, taken-at) pairs in the registry, and how many rows hold them."""
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT device_id, ts FROM health")).all()
    finally:
        engine.dispose()
    return {(r[0], r[1]) for r in rows}, len(rows)


@pytest.mark.slow
def test_a_process_killed_under_load_loses_no_report_and_stores_none_twice(
    fleet: HubFleet,
) -> None:
    """Devices report while the process leading the singleton work is killed. Its share of
    the shared subscriptions moves to the survivor, which also ends the dead session and
    stores what the broker had queued there: every report the broker acknowledged is stored,
    once. (Found by bench_hubscale: a broker reload at the takeover dropped reports.)"""
    leader = fleet.start_hub("hub-a")
    wait_for(lambda: LEADS in leader.output(), 30, "hub-a to take the singleton work")
    survivor = fleet.start_hub("hub-b")
    devices = fleet.enrolled_devices(10)
    snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")

    async def load() -> None:
        until = time.time() + 12
        reporting = asyncio.gather(*(d.report(snapshot, 0.1, until) for d in devices))
        await asyncio.sleep(3)
        leader.proc.kill()
        await reporting

    asyncio.run(load())
    sent = {(d.device_id, t) for d in devices for t in d.acked}
    url = fleet.home.load_config().registry.url

    deadline = time.monotonic() + 60
    while not sent <= stored_health(url)[0] and time.monotonic() < deadline:
        time.sleep(0.5)
    stored, rows = stored_health(url)
    lost = sent - stored
    assert not lost, f"{len(lost)} of {len(sent)} acknowledged reports lost"
    assert stored == sent
    assert rows == len(stored)
    wait_for(lambda: LEADS in survivor.output(), 30, "hub-b to take the singleton work")
    registry = open_registry(fleet.home)
    try:
        wait_for(lambda: registry.hub_processes() == ["hub-b"], 30, "hub-a's session ended")
    finally:
        registry.close()
