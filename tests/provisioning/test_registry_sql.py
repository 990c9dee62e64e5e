"""One registry on SQLAlchemy Core, the same rules on SQLite (the default) and on a real
PostgreSQL: migrations once under a lock, MQTT writes idempotent and ordered per device."""

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from provisioning import schema
from provisioning.home import HubHome, init_home
from provisioning.registry import Registry, engine_url
from tests.support import postgres
from tests.support.fleet import cli, free_port


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    r = Registry(registry_url)
    r.add_claim("site-a", "secret", {"site": "a"}, 2e9, 5, 1)
    r.add_device("dev-1", "site-a", {"site": "a"}, {"cores": 2}, 10)
    yield r
    r.close()


def versions(registry_url: str) -> list[int]:
    engine = schema.connect(engine_url(registry_url))
    with engine.connect() as conn:
        found = list(conn.execute(sa.select(schema.schema_migrations.c.version)).scalars())
    engine.dispose()
    return sorted(found)


def test_migrations_run_once_however_often_the_registry_is_opened(registry_url: str) -> None:
    first = Registry(registry_url)
    again = schema.migrate(first.engine)
    first.close()
    assert again == []
    assert versions(registry_url) == list(range(1, len(schema.MIGRATIONS) + 1))


def test_processes_starting_together_migrate_once(registry_url: str) -> None:
    """Eight openers at once (as eight hub processes would): the lock lets one migrate."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Registry(registry_url).close()
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert versions(registry_url) == list(range(1, len(schema.MIGRATIONS) + 1))


def test_a_replayed_health_report_is_stored_once(registry: Registry) -> None:
    assert registry.add_health("dev-1", 100.0, {"taken_at_s": 100.0}) is True
    assert registry.add_health("dev-1", 100.0, {"taken_at_s": 100.0}) is False
    assert registry.health_history("dev-1") == [{"taken_at_s": 100.0}]


def test_a_late_health_report_does_not_become_the_latest(registry: Registry) -> None:
    registry.add_health("dev-1", 200.0, {"taken_at_s": 200.0})
    registry.add_health("dev-1", 100.0, {"taken_at_s": 100.0})
    assert registry.latest_health("dev-1") == {"taken_at_s": 200.0}


def test_an_older_state_never_overwrites_a_newer_one(registry: Registry) -> None:
    assert registry.set_state("dev-1", {"software_version": "2"}, seq=5) is True
    assert registry.set_state("dev-1", {"software_version": "1"}, seq=3) is False
    device = registry.device("dev-1")
    assert device is not None and device.state == {"software_version": "2"}


def test_a_replayed_state_is_not_written_again(registry: Registry) -> None:
    registry.set_state("dev-1", {"software_version": "2"}, seq=5)
    assert registry.set_state("dev-1", {"software_version": "2"}, seq=5) is False


def test_a_newer_state_replaces_the_stored_one(registry: Registry) -> None:
    registry.set_state("dev-1", {"software_version": "1"}, seq=3)
    assert registry.set_state("dev-1", {"software_version": "2"}, seq=4) is True
    device = registry.device("dev-1")
    assert device is not None and device.software_version == "2"


def test_a_redelivered_event_is_stored_once(registry: Registry) -> None:
    event = {"id": "e1", "kind": "alert", "ts": 1.0, "data": {"alert": "x"}}
    assert registry.add_event("dev-1", event) is True
    assert registry.add_event("dev-1", event) is False
    assert [e["id"] for e in registry.events("dev-1")] == ["e1"]


def test_health_history_keeps_the_newest(registry: Registry) -> None:
    from provisioning import registry as module

    for ts in range(module.HEALTH_HISTORY + 5):
        registry.add_health("dev-1", float(ts), {"t": ts})
    history = registry.health_history("dev-1")
    assert len(history) == module.HEALTH_HISTORY
    assert history[0] == {"t": module.HEALTH_HISTORY + 4}


def test_enrollment_again_keeps_labels_and_updates_the_certificate(registry: Registry) -> None:
    registry.add_device("dev-1", "site-a", {"site": "other"}, {"cores": 4}, 11)
    device = registry.device("dev-1")
    assert device is not None
    assert (device.labels, device.facts, device.cert_serial) == ({"site": "a"}, {"cores": 4}, 11)
    assert registry.claim("site-a") is not None and registry.claim("site-a").uses == 1  # type: ignore[union-attr]


def test_revoked_devices_reach_the_crl_list_and_revoked_claims_do_not(
    registry: Registry,
) -> None:
    registry.revoke_device("dev-1")
    registry.revoke_claim("site-a")  # refused at enrollment, with its reason, not at TLS
    assert registry.revoked_serials() == [10]  # dev-1's certificate, not the claim's (1)


FIRST_SQLITE_SCHEMA = """
CREATE TABLE claims (id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, labels TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, max_uses INTEGER NOT NULL,
    cert_serial TEXT NOT NULL, revoked_at REAL);
CREATE TABLE devices (id TEXT PRIMARY KEY, claim_id TEXT NOT NULL REFERENCES claims(id),
    labels TEXT NOT NULL, facts TEXT NOT NULL, cert_serial TEXT NOT NULL,
    enrolled_at REAL NOT NULL, revoked_at REAL, availability TEXT NOT NULL DEFAULT 'never-seen',
    last_seen REAL, software_version TEXT, state TEXT);
CREATE TABLE health (device_id TEXT NOT NULL REFERENCES devices(id), ts REAL NOT NULL,
    received_at REAL NOT NULL, snapshot TEXT NOT NULL);
CREATE INDEX health_by_device ON health (device_id, ts);
CREATE TABLE events (id TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id),
    kind TEXT NOT NULL, ts REAL NOT NULL, data TEXT NOT NULL, received_at REAL NOT NULL);
INSERT INTO claims VALUES ('c', 'h', '{}', 1, 2e9, 3, '7', NULL);
INSERT INTO devices VALUES ('old', 'c', '{}', '{}', '8', 1, NULL, 'online', 1, '0.1', '{"a": 1}');
INSERT INTO health VALUES ('old', 5, 5, '{"t": 5}');
INSERT INTO health VALUES ('old', 5, 6, '{"t": 5}');
"""


@pytest.fixture
def pilot_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry file made by the first pilot's schema, opened (and so migrated) now."""
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_SQLITE_SCHEMA)
    registry = Registry(path)
    yield registry
    registry.close()


def test_a_pilot_registry_from_before_is_brought_forward_with_its_rows(
        pilot_registry: Registry) -> None:
    device = pilot_registry.device("old")
    assert device is not None and device.state == {"a": 1}
    assert pilot_registry.health_history("old") == [{"t": 5}]
    assert pilot_registry.set_state("old", {"a": 2}, seq=1) is True
    assert pilot_registry.add_health("old", 5.0, {"t": 5}) is False


def test_a_registry_from_before_counts_each_claims_uses_from_its_devices(
        pilot_registry: Registry) -> None:
    """Claims now keep their uses in their row; one made before gets its devices counted."""
    claim = pilot_registry.claim("c")
    assert claim is not None and claim.uses == 1


# --- choosing the registry: [registry] url, SPOKE_HUB_REGISTRY__URL -------------------------------


@pytest.fixture
def home(tmp_path: Path) -> HubHome:
    h = HubHome(tmp_path / "hub")
    init_home(h, "localhost", free_port(), free_port())
    return h


def token_names(registry_url: str) -> list[str]:
    registry = Registry(registry_url)
    try:
        return [t.name for t in registry.operator_tokens()]
    finally:
        registry.close()


def test_registry_url_in_hub_toml_puts_the_fleet_in_postgresql(
    home: HubHome, pg_cluster: postgres.Cluster
) -> None:
    url = pg_cluster.create_database(f"cfg{uuid.uuid4().hex[:8]}")
    with home.config.open("a") as f:
        f.write(f'\n[registry]\nurl = "{url}"\n')
    cli("spoke-hub", "tokens", "create", "--home", str(home.root), "--name", "alice")
    assert token_names(url) == ["alice"]
    assert not home.registry.exists()


def test_the_environment_overrides_the_registry_url(
    home: HubHome, pg_cluster: postgres.Cluster
) -> None:
    url = pg_cluster.create_database(f"env{uuid.uuid4().hex[:8]}")
    cli("spoke-hub", "tokens", "create", "--home", str(home.root), "--name", "bob",
        env={"SPOKE_HUB_REGISTRY__URL": url})
    assert token_names(url) == ["bob"]


def test_a_registry_url_of_another_kind_is_refused(home: HubHome) -> None:
    with home.config.open("a") as f:
        f.write('\n[registry]\nurl = "mysql://db/spoke"\n')
    proc = cli("spoke-hub", "tokens", "list", "--home", str(home.root), check=False)
    assert proc.returncode == 2
    assert "registry url must be sqlite:///PATH or postgresql://" in proc.stderr


def test_an_unreachable_registry_is_one_clear_line(home: HubHome) -> None:
    url = f"postgresql://spoke:secret@127.0.0.1:{free_port()}/spoke"
    proc = cli("spoke-hub", "tokens", "list", "--home", str(home.root), check=False,
               env={"SPOKE_HUB_REGISTRY__URL": url})
    assert proc.returncode == 2
    assert "the registry at postgresql+psycopg://spoke:***@127.0.0.1" in proc.stderr
    assert "unreachable" in proc.stderr and "secret" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
