"""Enrollments are granted side by side on PostgreSQL (provisioning.hub.GRANTS_AT_ONCE), each
decided on rows read without locks and recorded in one transaction whose last statement takes
the claim's use (Registry.enroll): a claim is never used past its ``max_uses``, whether the
enrollments race in one hub process or in several; a claim revoked or expired while an
enrollment is decided refuses it; a device whose two requests race takes one use; and a refused
or failed grant writes nothing. The races are played out deterministically too: another
registry (as another hub process) acts while ``grant`` runs, between the reads and the writes."""

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning.enrollment import Refusal, check_open, check_room
from provisioning.registry import Enrolled, EnrollmentRecords, Registry, open_registry
from provisioning.schema import claims
from scripts.bench_fleet import SimulatedDevice, claim_creds
from tests.support import postgres
from tests.support.fleet import free_port, wait_for
from tests.support.hubfleet import LEADS, HubFleet


def one_use_each(records: EnrollmentRecords, device_id: str) -> tuple[Enrolled, str]:
    """The rules of provisioning.enrollment.decide about rows: an open claim, a device not
    revoked, and a new device takes one use."""
    claim, existing, _ = records
    assert claim is not None
    check_open(claim, time.time())
    if existing is None:
        check_room(claim)
    elif existing.revoked_at is not None:
        raise Refusal("device-revoked", f"device {device_id} has been revoked")
    return Enrolled(device_id, claim.id, claim.labels, {}, int(uuid.uuid4()) >> 64,
                    "k" * 64, 2e9), device_id


@pytest.fixture
def two_registries(registry_url: str) -> Iterator[tuple[Registry, Registry]]:
    """Two registries on one database (two engines: as two hub processes), with a claim
    ``site-a`` good for one device."""
    first, second = Registry(registry_url), Registry(registry_url)
    first.add_claim("site-a", "secret", {}, 2e9, 1, 1)
    yield first, second
    first.close()
    second.close()


def meanwhile(
    action: Callable[[], object], device_id: str
) -> Callable[[EnrollmentRecords], tuple[Enrolled, str]]:
    """A grant that runs ``action`` once, after the enrollment's reads and before its writes
    (what another hub process may do in that moment), and then decides as ``one_use_each``."""
    calls: list[EnrollmentRecords] = []

    def grant(records: EnrollmentRecords) -> tuple[Enrolled, str]:
        if not calls:
            action()
        calls.append(records)
        return one_use_each(records, device_id)

    return grant


def test_an_enrollment_that_loses_the_claims_last_use_to_another_is_refused(
    two_registries: tuple[Registry, Registry],
) -> None:
    first, second = two_registries
    other = lambda: second.enroll("site-a", "dev-b", lambda r: one_use_each(r, "dev-b"))  # noqa: E731
    with pytest.raises(Refusal) as refused:
        first.enroll("site-a", "dev-a", meanwhile(other, "dev-a"))
    assert refused.value.code == "claim-exhausted"
    assert [d.id for d in first.devices()] == ["dev-b"]
    claim = first.claim("site-a")
    assert claim is not None and claim.uses == 1


def test_a_claim_revoked_while_an_enrollment_is_decided_refuses_it(
    two_registries: tuple[Registry, Registry],
) -> None:
    first, second = two_registries
    with pytest.raises(Refusal) as refused:
        first.enroll("site-a", "dev-a", meanwhile(lambda: second.revoke_claim("site-a"), "dev-a"))
    assert refused.value.code == "claim-revoked"
    assert first.devices() == []
    claim = first.claim("site-a")
    assert claim is not None and claim.uses == 0


def test_a_claim_that_expires_while_an_enrollment_is_decided_refuses_it(
    two_registries: tuple[Registry, Registry],
) -> None:
    first, second = two_registries

    def expire() -> None:
        with second.engine.begin() as conn:
            conn.execute(claims.update().values(expires_at=time.time() - 1))

    with pytest.raises(Refusal) as refused:
        first.enroll("site-a", "dev-a", meanwhile(expire, "dev-a"))
    assert refused.value.code == "claim-expired"
    assert first.devices() == []


def test_a_device_whose_two_requests_race_takes_one_use(
    two_registries: tuple[Registry, Registry],
) -> None:
    """The same device (same key, so same id) asks twice, through two processes: both are
    granted (the second as a re-enrollment), and the claim good for one is not used up."""
    first, second = two_registries
    other = lambda: second.enroll("site-a", "dev-a", lambda r: one_use_each(r, "dev-a"))  # noqa: E731
    assert first.enroll("site-a", "dev-a", meanwhile(other, "dev-a")) == "dev-a"
    assert [d.id for d in first.devices()] == ["dev-a"]
    claim = first.claim("site-a")
    assert claim is not None and claim.uses == 1
    assert len(first.certs_of("dev-a")) == 2  # one per answer, the last one current


def test_a_device_revoked_while_it_enrolls_again_is_refused(
    two_registries: tuple[Registry, Registry],
) -> None:
    first, second = two_registries
    first.enroll("site-a", "dev-a", lambda r: one_use_each(r, "dev-a"))
    with pytest.raises(Refusal) as refused:
        first.enroll("site-a", "dev-a", meanwhile(lambda: second.revoke_device("dev-a"), "dev-a"))
    assert refused.value.code == "device-revoked"
    assert len(first.certs_of("dev-a")) == 1


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
