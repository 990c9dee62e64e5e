"""The dashboard's cached desired states (fleet_api.PlacementInputs) over a real hub home: kept
while nothing changed, recomputed when the policy, the published versions or a device's
reported model changed, each written the way an operator or a device writes it (CLI, MQTT
state stored in the registry)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.fleet_api import PlacementInputs
from provisioning.home import HubHome
from provisioning.registry import Registry
from tests.delivery.conftest import make_artifact
from tests.support.fleet import Hub

# Each test initialises a hub home and publishes tiny models through the CLI.
pytestmark = pytest.mark.slow

POLICY = """
[[rule]]
name = "bridges"
model = "crack-vit"
version = ">=1.0,<2"
"""
CANARY = POLICY + "canary = 50\n"


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    hub = Hub(tmp_path)
    hub.publish(make_artifact(tmp_path, "1.0.0", seed=0))
    return hub


@pytest.fixture
def registry(hub: Hub) -> Iterator[Registry]:
    reg = Registry(hub.home / "registry.db")
    reg.add_claim("c", "token", {}, time.time() + 3600, 10, 1)
    for i in range(4):
        reg.add_device(f"d{i}", "c", {"site": "b1"}, {}, 10 + i)
    yield reg
    reg.close()


def wanted(inputs: PlacementInputs, registry: Registry) -> dict[str, str | None]:
    return {d: s.model.version if s.model else None
            for d, s in inputs.desired(registry.devices()).items()}


def placement(hub: Hub) -> PlacementInputs:
    home = HubHome(hub.home)
    return PlacementInputs(home, home.load_config())


def test_unchanged_inputs_reuse_the_computed_states(hub: Hub, registry: Registry) -> None:
    hub.apply_policy(POLICY)
    inputs = placement(hub)
    first = inputs.desired(registry.devices())
    assert inputs.desired(registry.devices()) is first


def test_a_new_policy_is_seen_at_once(hub: Hub, registry: Registry) -> None:
    inputs = placement(hub)
    assert set(wanted(inputs, registry).values()) == {None}  # no policy: no rule matches
    hub.apply_policy(POLICY)
    assert set(wanted(inputs, registry).values()) == {"1.0.0"}


def test_a_newly_published_version_goes_to_the_canary_first(
    hub: Hub, registry: Registry, tmp_path: Path
) -> None:
    hub.apply_policy(CANARY)
    inputs = placement(hub)
    before = wanted(inputs, registry)  # 1.0.0's own canary: the other half waits for it
    assert sorted(map(str, before.values())) == ["1.0.0", "1.0.0", "None", "None"]
    hub.publish(make_artifact(tmp_path, "1.1.0", seed=1))
    after = wanted(inputs, registry)
    assert sorted(map(str, after.values())) == ["1.0.0", "1.0.0", "1.1.0", "1.1.0"]


def test_a_canary_reporting_the_new_version_committed_releases_the_rest(
    hub: Hub, registry: Registry, tmp_path: Path
) -> None:
    hub.apply_policy(CANARY)
    hub.publish(make_artifact(tmp_path, "1.1.0", seed=1))
    inputs = placement(hub)
    canary = [d for d, v in wanted(inputs, registry).items() if v == "1.1.0"]
    for device in canary:
        registry.set_state(device, {"model": {"name": "crack-vit", "version": "1.1.0",
                                              "state": "committed"}})
    assert set(wanted(inputs, registry).values()) == {"1.1.0"}
