"""The one device listing behind `spoke-hub devices` and GET /api/v1/devices, over a real
registry (a SQLite file, and a real PostgreSQL): filter by selector, alerting devices first,
paging, connectivity, no "null null"; and the fleet-wide reads it makes in one query each."""

import time
from typing import Any

import pytest
import sqlalchemy as sa

from appliance.errors import ConfigError
from provisioning.fleet import STALE_AFTER_S, device_page, every_device
from provisioning.registry import Registry

SNAPSHOT: dict[str, Any] = {
    "taken_at_s": 0.0,
    "host": {
        "cpu": {"usage_ratio_per_core": [0.2, 0.4]},
        "memory": {"total_bytes": 100, "available_bytes": 25},
        "filesystems": [{"total_bytes": 10, "used_bytes": 5}],
    },
    "gpu": {"status": "ok", "gpus": [{"temperature_celsius": 61.0, "memory_used_bytes": 3,
                                       "memory_total_bytes": 4}]},
}


def alert(device: str, n: int, state: str = "raised") -> dict[str, Any]:
    return {"id": f"{device}-a{n}", "kind": "alert", "ts": time.time() + n,
            "data": {"alert": "disk_full", "subject": "/", "state": state,
                     "severity": "critical", "message": "disk 97 % full", "at_s": 0}}



@pytest.fixture
def registry(registry_url: str) -> Registry:
    reg = Registry(registry_url)
    reg.add_claim("c1", "token", {}, time.time() + 3600, 100, 1)
    sites = ["bridge-17", "bridge-18", "bridge-18", "depot", "bridge-17"]
    for i, site in enumerate(sites):
        dev = f"dev{i}"
        reg.add_device(dev, "c1", {"site": site, "region": "south" if i == 2 else "north"},
                       {"cpu_count": 4}, i + 10)
        reg.set_availability(dev, "online")
    return reg


def test_selector_filters_and_alerting_devices_come_first(registry: Registry) -> None:
    registry.add_event("dev4", alert("dev4", 1))
    page = device_page(registry, "site in (bridge-17, bridge-18), region!=south")
    assert [s.device.id for s in page.items] == ["dev4", "dev0", "dev1"]
    assert [s.site for s in page.sites] == ["bridge-17", "bridge-18"]
    assert page.sites[0].alerting == 1 and page.sites[0].online == 2


def test_a_cleared_alert_no_longer_puts_a_device_first(registry: Registry) -> None:
    registry.add_event("dev4", alert("dev4", 1))
    registry.add_event("dev4", alert("dev4", 2, "cleared"))
    assert device_page(registry).items[0].device.id == "dev0"


def test_pages_cover_the_fleet_once_in_order(registry: Registry) -> None:
    first = device_page(registry, limit=2)
    second = device_page(registry, limit=2, cursor=first.next_cursor)
    third = device_page(registry, limit=2, cursor=second.next_cursor)
    ids = [s.device.id for p in (first, second, third) for s in p.items]
    assert ids == [s.device.id for s in every_device(registry)]
    assert sorted(ids) == [f"dev{i}" for i in range(5)]
    assert third.next_cursor is None and first.total == 5


def test_health_is_read_for_the_page(registry: Registry) -> None:
    registry.add_health("dev0", time.time(), SNAPSHOT | {"taken_at_s": time.time()})
    row = device_page(registry, "site=bridge-17", limit=1).as_dict()["items"][0]
    assert row["health"]["cpu_ratio"] == pytest.approx(0.3)
    assert row["health"]["memory_used_ratio"] == pytest.approx(0.75)
    assert row["health"]["gpu_max_temperature_celsius"] == 61.0


def test_no_model_reads_as_none_not_null_null(registry: Registry) -> None:
    registry.set_state("dev0", {"model": {"name": None, "version": None, "state": "none"}})
    registry.set_state("dev1", {"model": {"name": "crack-vit", "version": "1.1.0",
                                          "state": "probation"}})
    rows = {d["id"]: d for d in (s.as_dict() for s in every_device(registry))}
    assert rows["dev0"]["model"] is None and rows["dev0"]["model_state"] is None
    assert rows["dev1"]["model"] == "crack-vit@1.1.0" and rows["dev1"]["model_state"] == "probation"


def test_connectivity_online_stale_offline_revoked(registry: Registry) -> None:
    registry.set_availability("dev1", "offline")
    registry.revoke_device("dev2")
    with registry.engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET last_seen = :t WHERE id = 'dev3'"),
                     {"t": time.time() - STALE_AFTER_S - 1})
    rows = {s.device.id: s.connectivity for s in every_device(registry)}
    assert rows == {"dev0": "online", "dev1": "offline", "dev2": "revoked", "dev3": "stale",
                    "dev4": "online"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selector": "site in (a"}, "bad filter"),
        ({"selector": "site ~ a"}, "bad filter"),
        ({"limit": 0}, "bad limit"),
        ({"limit": 501}, "bad limit"),
        ({"cursor": "x1"}, "bad cursor"),
    ],
)
def test_bad_listing_input_is_a_clear_error(
    registry: Registry, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        device_page(registry, **kwargs)
    assert len(registry.devices()) == 5


def test_an_acknowledgement_is_kept_once_and_survives_reopening(
    registry: Registry, registry_url: str
) -> None:
    registry.add_event("dev0", alert("dev0", 1))
    first = registry.acknowledge("dev0-a1", "alice")
    assert first is not None and first["by"] == "alice"
    assert registry.acknowledge("dev0-a1", "bob") == first
    registry.close()
    reopened = Registry(registry_url)
    row = device_page(reopened).items[0].as_dict()
    assert row["alerts"][0]["acknowledged"] == first


def test_acknowledging_an_unknown_or_non_alert_event_is_refused(registry: Registry) -> None:
    registry.add_event("dev0", {"id": "d1", "kind": "detection", "ts": 1.0, "data": {}})
    assert registry.acknowledge("nope", "alice") is None
    assert registry.acknowledge("d1", "alice") is None
    assert registry.acknowledgements(["nope", "d1"]) == {}


def test_a_certificate_near_its_end_is_an_alert_with_nothing_to_acknowledge(
    registry: Registry,
) -> None:
    registry.add_cert("dev3", 99, "k" * 64, time.time() + 10 * 86400)
    first = device_page(registry).as_dict()["items"][0]
    assert first["id"] == "dev3" and first["cert_not_after"] > time.time()
    (alert,) = first["alerts"]
    assert (alert["alert"], alert["event_id"], alert["acknowledged"]) == (
        "certificate_expiring", None, None)


def test_fleet_wide_reads_give_what_the_per_device_reads_give(registry: Registry) -> None:
    """One query for every device's newest alert events and one for the page's latest health
    (the overview used to make one per device): the same rows, newest first, per device."""
    for n in range(4):
        registry.add_event("dev1", alert("dev1", n, "cleared" if n % 2 else "raised"))
        registry.add_health("dev1", 100.0 + n, SNAPSHOT | {"taken_at_s": 100.0 + n})
    registry.add_event("dev2", alert("dev2", 1))
    registry.add_event("dev2", {"id": "d1", "kind": "detection", "ts": 1.0, "data": {}})
    registry.add_health("dev2", 50.0, SNAPSHOT | {"taken_at_s": 50.0})
    bulk = registry.recent_events_by_device("alert", 3)
    assert bulk == {d: registry.events(d, kind="alert", limit=3) for d in ("dev1", "dev2")}
    assert [e["id"] for e in bulk["dev1"]] == ["dev1-a3", "dev1-a2", "dev1-a1"]
    latest = registry.latest_health_of(["dev1", "dev2", "dev3"])
    assert latest == {d: registry.latest_health(d) for d in ("dev1", "dev2")}
    assert latest["dev1"]["taken_at_s"] == 103.0
    # Past the 500 ids one statement takes, on both sides of the boundary.
    many = ["dev1", *(f"ghost{i}" for i in range(600)), "dev2"]
    assert registry.latest_health_of(many) == latest
