"""Health reports are stored in batches (one transaction per batch, provisioning.hub.consume):
the rules of single writes hold for a batch, on SQLite and on a real PostgreSQL. A replay, a
late report, a report arriving through another hub process, a device that is not enrolled or
is revoked: nothing is stored twice, nothing newer is overwritten, nothing stored is lost."""

import json
import threading
from collections.abc import Iterator

import pytest

from provisioning.registry import HEALTH_HISTORY, HealthReport, Registry


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    r = Registry(registry_url)
    r.add_claim("site-a", "secret", {}, 2e9, 100, 1)
    for i in range(3):
        r.add_device(f"dev-{i}", "site-a", {}, {}, 10 + i)
    yield r
    r.close()


def report(device_id: str, ts: float) -> HealthReport:
    return HealthReport(device_id, ts, json.dumps({"taken_at_s": ts, "device": device_id}))


def stored_ts(registry: Registry, device_id: str) -> list[float]:
    return [s["taken_at_s"] for s in registry.health_history(device_id)]


def test_a_batch_stores_every_new_report_of_every_device(registry: Registry) -> None:
    batch = [report(f"dev-{i}", 100.0 + t) for t in range(4) for i in range(3)]
    assert registry.add_health_reports(batch) == 12
    for i in range(3):
        assert stored_ts(registry, f"dev-{i}") == [103.0, 102.0, 101.0, 100.0]


def test_a_replayed_batch_stores_nothing_twice(registry: Registry) -> None:
    batch = [report("dev-0", 100.0), report("dev-1", 100.0)]
    registry.add_health_reports(batch)
    assert registry.add_health_reports(batch) == 0
    assert stored_ts(registry, "dev-0") == [100.0]


def test_a_report_twice_in_one_batch_is_stored_once(registry: Registry) -> None:
    assert registry.add_health_reports([report("dev-0", 100.0), report("dev-0", 100.0)]) == 1
    assert stored_ts(registry, "dev-0") == [100.0]


def test_a_batch_mixing_replays_and_new_reports_stores_the_new_ones(registry: Registry) -> None:
    registry.add_health_reports([report("dev-0", 100.0)])
    assert registry.add_health_reports([report("dev-0", 100.0), report("dev-0", 101.0)]) == 1
    assert stored_ts(registry, "dev-0") == [101.0, 100.0]


def test_an_out_of_order_batch_keeps_the_newest_report_the_latest(registry: Registry) -> None:
    registry.add_health_reports([report("dev-0", 300.0)])
    registry.add_health_reports([report("dev-0", 200.0), report("dev-0", 100.0)])
    assert registry.latest_health("dev-0") == {"taken_at_s": 300.0, "device": "dev-0"}
    assert stored_ts(registry, "dev-0") == [300.0, 200.0, 100.0]


def test_reports_of_unknown_and_revoked_devices_are_left_out_of_a_batch(
    registry: Registry,
) -> None:
    registry.revoke_device("dev-1")
    batch = [report("dev-0", 1.0), report("dev-1", 1.0), report("nosuch", 1.0)]
    assert registry.add_health_reports(batch) == 1
    assert stored_ts(registry, "dev-0") == [1.0]
    assert stored_ts(registry, "dev-1") == []
    assert registry.health_history("nosuch") == []


def test_a_batch_marks_its_devices_seen(registry: Registry) -> None:
    registry.add_health_reports([report("dev-2", 1.0)])
    seen = {d.id: d.last_seen for d in registry.devices()}
    assert seen["dev-2"] is not None
    assert seen["dev-0"] is None


def test_a_batch_trims_each_device_to_its_newest_history(registry: Registry) -> None:
    older = [report(d, float(t)) for t in range(HEALTH_HISTORY) for d in ("dev-0", "dev-1")]
    registry.add_health_reports(older)
    newer = [report(d, float(HEALTH_HISTORY + t)) for t in range(3) for d in ("dev-0", "dev-1")]
    registry.add_health_reports([*newer, report("dev-2", 5.0)])
    for device in ("dev-0", "dev-1"):
        kept = stored_ts(registry, device)
        assert len(kept) == HEALTH_HISTORY
        assert kept[0] == HEALTH_HISTORY + 2 and kept[-1] == 3.0
    assert stored_ts(registry, "dev-2") == [5.0]


def test_overlapping_batches_from_two_processes_store_each_report_once(registry_url: str) -> None:
    """Two registries (two engines and connection pools, as two hub processes have) write
    batches that overlap (a redelivery reaching the other process) at the same time."""
    first, second = Registry(registry_url), Registry(registry_url)
    first.add_claim("site-a", "secret", {}, 2e9, 100, 1)
    for i in range(4):
        first.add_device(f"dev-{i}", "site-a", {}, {}, 10 + i)
    reports = [report(f"dev-{i}", float(t)) for t in range(60) for i in range(4)]
    stored: list[int] = []
    errors: list[BaseException] = []

    def write(registry: Registry, offset: int) -> None:
        try:
            for start in range(offset, len(reports), 20):
                stored.append(registry.add_health_reports(reports[start:start + 30]))
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(r, o)) for r, o in ((first, 0), (second, 10))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(stored) == len(reports)
        for i in range(4):
            assert stored_ts(first, f"dev-{i}") == [float(t) for t in reversed(range(60))]
    finally:
        first.close()
        second.close()
