"""Enrollments are granted side by side on PostgreSQL (provisioning.hub.GRANTS_AT_ONCE), each
decided and recorded in one transaction with its claim's row locked (Registry.enroll): a claim
is never used past its ``max_uses``, whether the enrollments race in one hub process or in
several, and a refused or failed grant writes nothing."""

import asyncio
import os
import threading
import uuid
from pathlib import Path

import pytest

from provisioning.enrollment import Refusal
from provisioning.registry import Enrolled, EnrollmentRecords, Registry, open_registry
from scripts.bench_fleet import SimulatedDevice, claim_creds
from tests.support import postgres
from tests.support.fleet import free_port, wait_for
from tests.support.hubfleet import LEADS, HubFleet


def one_use_each(records: EnrollmentRecords, device_id: str) -> tuple[Enrolled, str]:
    """The claim rule of provisioning.enrollment.decide: a new device takes one use."""
    claim, existing, _ = records
    assert claim is not None
    if existing is None and claim.uses >= claim.max_uses:
        raise Refusal("claim-exhausted", "used up")
    return Enrolled(device_id, claim.id, claim.labels, {}, int(uuid.uuid4()) >> 64,
                    "k" * 64, 2e9), device_id


def test_racing_enrollments_in_two_processes_never_pass_max_uses(
    pg_cluster: postgres.Cluster,
) -> None:
    url = pg_cluster.create_database(f"t{uuid.uuid4().hex[:12]}")
    registries = [Registry(url), Registry(url)]  # two engines: as two hub processes
    registries[0].add_claim("site-a", "secret", {}, 2e9, 3, 1)
    granted: list[str] = []
    refused: list[str] = []

    def enroll(registry: Registry, device_id: str) -> None:
        try:
            granted.append(registry.enroll(
                "site-a", device_id, lambda r: one_use_each(r, device_id)
            ))
        except Refusal:
            refused.append(device_id)

    threads = [
        threading.Thread(target=enroll, args=(registries[i % 2], f"dev-{i}")) for i in range(10)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(granted), len(refused)) == (3, 7)
        assert sorted(d.id for d in registries[1].devices()) == sorted(granted)
        claim = registries[1].claim("site-a")
        assert claim is not None and claim.uses == 3
    finally:
        for r in registries:
            r.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_refused_grant_writes_nothing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
        url = cluster.create_database(f"t{uuid.uuid4().hex[:12]}")
    registry = Registry(url)
    try:
        registry.add_claim("site-a", "secret", {}, 2e9, 1, 1)
        registry.enroll("site-a", "dev-0", lambda r: one_use_each(r, "dev-0"))
        with pytest.raises(Refusal):
            registry.enroll("site-a", "dev-1", lambda r: one_use_each(r, "dev-1"))
        assert [d.id for d in registry.devices()] == ["dev-0"]
        # Enrolling again with the same device uses no slot.
        assert registry.enroll("site-a", "dev-0", lambda r: one_use_each(r, "dev-0")) == "dev-0"
    finally:
        registry.close()


@pytest.mark.slow
def test_devices_enrolling_at_once_through_the_hub_get_exactly_max_uses(
    tmp_path: Path, pg_cluster: postgres.Cluster
) -> None:
    """Eight real devices (claim certificate, CSR, MQTT 5 request and response) ask one hub
    process at once with a bundle good for three: three are accepted, five refused."""
    fleet = HubFleet(tmp_path, pg_cluster.create_database(f"fleet{os.getpid()}{free_port()}"))
    try:
        hub = fleet.start_hub("hub-a")
        wait_for(lambda: LEADS in hub.output(), 30, "hub-a to take the singleton work")
        payload = claim_creds(fleet.hub.bundle(tmp_path / "site.spoke", "--max-uses", "3"),
                              tmp_path / "creds")
        devices = [SimulatedDevice(payload, tmp_path / "creds") for _ in range(8)]

        async def enroll_all() -> list[BaseException | None]:
            return await asyncio.gather(*(d.enroll() for d in devices), return_exceptions=True)

        outcomes = asyncio.run(enroll_all())
        refusals = [str(o) for o in outcomes if o is not None]
        assert len(refusals) == 5 and all("claim-exhausted" in r for r in refusals), refusals
        registry = open_registry(fleet.home)
        try:
            enrolled = {d.id for d in registry.devices()}
        finally:
            registry.close()
        accepted = {d.device_id for d, o in zip(devices, outcomes, strict=True) if o is None}
        assert enrolled == accepted and len(accepted) == 3
    finally:
        fleet.close()
