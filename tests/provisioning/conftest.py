import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.fleet import Appliance, Hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path).start()
    yield h
    h.stop()


@pytest.fixture
def bundle(hub: Hub, tmp_path: Path) -> Path:
    return hub.bundle(tmp_path / "site.spoke")


@pytest.fixture
def appliances(tmp_path: Path, hub: Hub) -> Iterator[list[Appliance]]:
    made: list[Appliance] = []
    yield made
    for a in made:
        a.kill()


@pytest.fixture
def appliance(appliances: list[Appliance], tmp_path: Path, hub: Hub) -> Appliance:
    a = Appliance(tmp_path, hub)
    appliances.append(a)
    return a


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    """One throw-away PostgreSQL for the session; each test makes its own database in it."""
    with postgres.cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database: a SQLite file, then a database in the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"t{uuid.uuid4().hex[:12]}")
