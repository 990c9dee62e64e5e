"""The light simulated fleet (tests/support/litefleet.py) is the instrument of the 10,000-device
bench: what it counts as sent must be what the hub stores. Real hub process, mosquitto and
PostgreSQL; the devices' bare MQTT 5 clients in two worker processes."""

import asyncio
import os
import time
from pathlib import Path

import pytest

from appliance.health import DaemonFacts
from daemon.health.sampler import Sampler
from provisioning.registry import open_registry
from tests.support import postgres
from tests.support.fleet import free_port
from tests.support.hubfleet import HubFleet
from tests.support.litefleet import Address, LiteFleet, Part, Spec
from tests.support.wait import wait_for


def stored_times(fleet: HubFleet, device_ids: list[str]) -> dict[str, list[float]]:
    registry = open_registry(fleet.home)
    try:
        return {d: sorted(s["taken_at_s"] for s in registry.health_history(d))
                for d in device_ids}
    finally:
        registry.close()


@pytest.mark.slow
def test_every_report_the_light_fleet_counts_as_sent_is_stored_once(
    tmp_path: Path, pg_cluster: postgres.Cluster
) -> None:
    fleet = HubFleet(tmp_path, pg_cluster.create_database(f"lite{os.getpid()}{free_port()}"))
    try:
        fleet.start_hub("hub-a")
        devices = fleet.enrolled_devices(6)
        where = Address("localhost", fleet.hub.mqtt_port, fleet.home.ca_cert, 50.0)
        sim = LiteFleet([Spec(d.device_id, d.cert, d.key) for d in devices], where, 2)
        try:
            assert sim.wait_up() == 0
            snapshot = Sampler().sample(DaemonFacts()).model_dump(mode="json")
            start = time.time() + 0.5
            acked, reconnects = asyncio.run(sim.run(Part(start, 0.5, start + 2.0, snapshot)))
        finally:
            sim.close()
        ids = [d.device_id for d in devices]
        assert sorted(acked) == sorted(ids) and reconnects == 0
        assert all(acked[d] for d in ids)  # every device got reports out
        expected = {d: sorted(acked[d]) for d in ids}
        wait_for(lambda: stored_times(fleet, ids) == expected, 60,
                 lambda: f"the hub to store {expected}; it has {stored_times(fleet, ids)}")
    finally:
        fleet.close()
