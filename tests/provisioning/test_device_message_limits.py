"""The hub's one size limit on device reports (provisioning.hub MAX_DEVICE_MESSAGE_BYTES): a
report one byte past it is refused as oversized on every topic, counted once, and stores
nothing; one exactly at it is taken. Driven through ``HubService.handle``, the entry every
broker batch goes through, with a real registry and real MQTT messages."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from appliance import topics
from appliance.config import HubConfig
from appliance.health import DaemonFacts
from daemon.health.sampler import Sampler
from provisioning import metrics
from provisioning.home import HubHome, init_home
from provisioning.hub import MAX_DEVICE_MESSAGE_BYTES, HubService
from provisioning.registry import Registry

DEVICE = "dev-limits"
KINDS = {"available": topics.available, "state": topics.state, "health": topics.health,
         "events": topics.events}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    r.add_claim("site-a", "secret", {}, time.time() + 3600, 10, 1)
    r.add_device(DEVICE, "site-a", {}, {}, 10)
    yield r
    r.close()


@pytest.fixture
def hub(tmp_path: Path, registry: Registry) -> HubService:
    home = HubHome(tmp_path / "hub")
    init_home(home, "localhost", 1883, 8443)
    return HubService(home, HubConfig(), registry)


def valid(kind: str) -> bytes:
    """A report of ``kind`` that the hub takes."""
    body = {
        "available": "online",
        "state": {"device_id": DEVICE, "software_version": "0.1.0", "provisioning": "enrolled",
                  "labels": {}, "started_at": 1.0, "seq": 1},
        "health": Sampler().sample(DaemonFacts()).model_dump(mode="json"),
        "events": {"id": "e-limit", "kind": "limit", "ts": 1.0, "data": {}},
    }[kind]
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def padded(kind: str, size: int) -> bytes:
    """A valid report grown with JSON whitespace to ``size`` bytes."""
    payload = valid(kind)
    return payload + b" " * (size - len(payload))


def refused(kind: str, reason: str) -> float:
    value = metrics.INGEST.get_sample_value(
        "spoke_hub_messages_refused_total", {"topic": kind, "reason": reason})
    return value or 0.0


def stored(registry: Registry, kind: str) -> object:
    """What the registry holds of the device's reports of ``kind``."""
    device = registry.device(DEVICE)
    assert device is not None
    return {
        "available": device.availability,
        "state": device.state,
        "health": registry.health_history(DEVICE),
        "events": registry.events(DEVICE),
    }[kind]


async def handle(hub: HubService, kind: str, payload: bytes) -> None:
    message = aiomqtt.Message(KINDS[kind](DEVICE), payload, 1, False, 1, None)
    await hub.handle(aiomqtt.Client("127.0.0.1"), [message])


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_report_past_the_limit_is_refused_as_oversized_and_stores_nothing(
    hub: HubService, registry: Registry, kind: str
) -> None:
    before = stored(registry, kind)
    counted = {reason: refused(kind, reason) for reason in ("oversized", "malformed")}
    await handle(hub, kind, padded(kind, MAX_DEVICE_MESSAGE_BYTES + 1))
    assert refused(kind, "oversized") == counted["oversized"] + 1
    assert refused(kind, "malformed") == counted["malformed"]
    assert stored(registry, kind) == before


@pytest.mark.parametrize("kind", ["state", "health", "events"])
async def test_a_report_exactly_at_the_limit_is_taken(
    hub: HubService, registry: Registry, kind: str
) -> None:
    counted = refused(kind, "oversized")
    await handle(hub, kind, padded(kind, MAX_DEVICE_MESSAGE_BYTES))
    assert refused(kind, "oversized") == counted
    assert stored(registry, kind)
