from collections.abc import Iterator

import pytest

from tests.provisioning.conftest import (  # noqa: F401  (a real PostgreSQL, per session)
    pg_cluster,
    registry_url,
)
from tests.support.fleet import Appliance, Hub


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Appliance, str]]:
    """One hub and one enrolled, online appliance shared by a module's tests."""
    root = tmp_path_factory.mktemp("fleet")
    hub = Hub(root).start()
    appliance = Appliance(root, hub).start(hub.bundle(root / "site.spoke"))
    try:
        device_id = appliance.wait_enrolled()
        hub.wait_availability(device_id, "online")
        yield hub, appliance, device_id
    finally:
        appliance.kill()
        hub.stop()
