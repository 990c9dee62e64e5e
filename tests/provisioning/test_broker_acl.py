"""The broker enforces identity: proven with a second, real MQTT client that tries."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import topics
from tests.support.fleet import Appliance, Hub
from tests.support.probe import Probe


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Path, list[Appliance]]]:
    """One hub and two enrolled devices shared by every test here: they only try things."""
    root = tmp_path_factory.mktemp("acl")
    hub = Hub(root).start()
    bundle = hub.bundle(root / "site.spoke")
    pair = [Appliance(root, hub, f"box{i}") for i in range(2)]
    try:
        for a in pair:
            a.start(bundle)
        for a in pair:
            a.wait_enrolled()
        yield hub, bundle, pair
    finally:
        for a in pair:
            a.kill()
        hub.stop()


@pytest.fixture
def hub(fleet: tuple[Hub, Path, list[Appliance]]) -> Hub:
    return fleet[0]


@pytest.fixture
def bundle(fleet: tuple[Hub, Path, list[Appliance]]) -> Path:
    return fleet[1]


@pytest.fixture
def two_devices(fleet: tuple[Hub, Path, list[Appliance]]) -> list[Appliance]:
    return fleet[2]


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for p in made:
        p.close()


def device_probe(a: Appliance, hub: Hub, probes: list[Probe], suffix: str = "") -> Probe:
    ident = a.state_dir / "identity"
    device_id = json.loads((ident / "identity.json").read_text())["device_id"]
    p = Probe(
        hub.mqtt_port,
        ident / "ca.crt",
        ident / "device.crt",
        ident / "device.key",
        device_id + suffix,
    )
    probes.append(p)
    assert p.connect()
    return p


def hub_probe(hub: Hub, probes: list[Probe]) -> Probe:
    p = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        hub.home / "hub" / "hub.crt",
        hub.home / "hub" / "hub.key",
        "witness",
    )
    probes.append(p)
    assert p.connect()
    assert p.subscribe(f"{topics.ROOT}/#")
    return p


def claim_probe(bundle: Path, hub: Hub, probes: list[Probe], tmp_path: Path) -> Probe:
    payload = json.loads(__import__("base64").b64decode(json.loads(bundle.read_text())["payload"]))
    (tmp_path / "claim.crt").write_text(payload["claim"]["certificate"])
    (tmp_path / "claim.key").write_text(payload["claim"]["key"])
    p = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        tmp_path / "claim.crt",
        tmp_path / "claim.key",
        "sneaky-claim",
    )
    probes.append(p)
    assert p.connect()
    return p


def device_id_of(a: Appliance) -> str:
    return json.loads((a.state_dir / "identity" / "identity.json").read_text())["device_id"]


def test_device_cannot_publish_to_another_devices_topics(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    mallory, victim = two_devices
    witness = hub_probe(hub, probes)
    attacker = device_probe(mallory, hub, probes, "-probe")
    target = topics.state(device_id_of(victim))
    attacker.publish(target, b'{"forged": true}')
    assert b'{"forged": true}' not in witness.received(target)


def test_device_cannot_read_another_devices_topics(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    """mosquitto grants the SUBACK but must never deliver: that is what is asserted."""
    mallory, victim = two_devices
    hub_side = hub_probe(hub, probes)
    attacker = device_probe(mallory, hub, probes, "-probe")
    victim_id = device_id_of(victim)
    secrets = [
        topics.desired(victim_id),
        topics.command(victim_id, "ping"),
        topics.health(victim_id),
        topics.events_ack(victim_id),
    ]
    for topic in secrets:
        attacker.subscribe(topic)
    for topic in secrets:
        hub_side.publish(topic, b"for the victim only")
    for topic in secrets:
        assert attacker.received(topic, timeout=1.0) == []


def test_device_cannot_publish_commands_to_itself_or_others(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    mallory, victim = two_devices
    witness = hub_probe(hub, probes)
    attacker = device_probe(mallory, hub, probes, "-probe")
    target = topics.command(device_id_of(victim), "restart")
    attacker.publish(target, b"{}")
    assert witness.received(target) == []


def test_device_can_use_its_own_topics(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    """The positive control: the same probe is allowed what is its own."""
    me = two_devices[0]
    witness = hub_probe(hub, probes)
    probe = device_probe(me, hub, probes, "-probe")
    own = topics.events(device_id_of(me))
    probe.publish(own, b"hello")
    assert witness.received(own) == [b"hello"]
    assert probe.subscribe(topics.desired(device_id_of(me)))
    witness.publish(topics.desired(device_id_of(me)), b"yours")
    # The hub's retained desired state may arrive first; ours must arrive too.
    assert b"yours" in probe.received(topics.desired(device_id_of(me)))


def test_the_hub_acknowledges_each_stored_event_to_its_device(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    """Only the hub's word that an event is stored lets a device forget it: a valid event and
    one the hub refuses for good (sending it again cannot help) are both acknowledged."""
    me = two_devices[0]
    probe = device_probe(me, hub, probes, "-probe")
    ack_topic = topics.events_ack(device_id_of(me))
    assert probe.subscribe(ack_topic)
    event = {"id": "ack-test-1", "kind": "note", "ts": 1.0, "data": {"n": 1}}
    probe.publish(topics.events(device_id_of(me)), json.dumps(event).encode())
    probe.publish(topics.events(device_id_of(me)), b'{"id": "ack-test-bad", "kind": 7}')
    acked: set[str] = set()
    for payload in probe.received(ack_topic, timeout=5.0):
        acked.update(json.loads(payload)["ids"])
    assert acked == {"ack-test-1", "ack-test-bad"}
    assert [e["id"] for e in hub.events(device_id_of(me), "note")] == ["ack-test-1"]


def test_claim_credential_can_do_nothing_but_enroll(
    hub: Hub, bundle: Path, two_devices: list[Appliance], probes: list[Probe], tmp_path: Path
) -> None:
    witness = hub_probe(hub, probes)
    claim = claim_probe(bundle, hub, probes, tmp_path)
    victim = device_id_of(two_devices[0])
    claim.publish(topics.state(victim), b"forged-by-claim")
    claim.publish(topics.available(victim), b"forged-by-claim")
    assert b"forged-by-claim" not in witness.received(topics.state(victim))
    assert b"forged-by-claim" not in witness.received(topics.available(victim))
    claim.subscribe(f"{topics.ROOT}/#")
    witness.publish(topics.desired(victim), b"not for claims")
    witness.publish(topics.enroll_response("someone-else"), b"not yours")
    assert claim.received(topics.desired(victim)) == []
    assert claim.received(topics.enroll_response("someone-else")) == []


def test_client_without_a_certificate_cannot_connect(hub: Hub, probes: list[Probe]) -> None:
    anonymous = Probe(hub.mqtt_port, hub.home / "ca" / "ca.crt", None, None, "anonymous")
    probes.append(anonymous)
    assert not anonymous.connect()


def test_client_with_a_certificate_from_another_ca_cannot_connect(
    hub: Hub, probes: list[Probe], tmp_path: Path
) -> None:
    other = Hub(tmp_path / "other")
    stranger = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        other.home / "hub" / "hub.crt",
        other.home / "hub" / "hub.key",
        "stranger",
    )
    probes.append(stranger)
    assert not stranger.connect()


def test_device_cannot_ask_to_renew_another_devices_certificate(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    """The hub trusts the renew topic's id only because the ACL binds it to the cert's name."""
    mallory, victim = two_devices
    witness = hub_probe(hub, probes)
    attacker = device_probe(mallory, hub, probes, "-probe")
    target = topics.renew_request(device_id_of(victim))
    attacker.publish(target, b'{"forged": true}')
    assert witness.received(target) == []


def test_device_cannot_read_another_devices_renewal_answer(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    mallory, victim = two_devices
    hub_side = hub_probe(hub, probes)
    attacker = device_probe(mallory, hub, probes, "-probe")
    answer = topics.renew_response(device_id_of(victim))
    attacker.subscribe(answer)
    hub_side.publish(answer, b"a certificate for the victim")
    assert attacker.received(answer, timeout=1.0) == []


def test_device_can_use_its_own_renew_topics(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    me = device_id_of(two_devices[0])
    witness = hub_probe(hub, probes)
    probe = device_probe(two_devices[0], hub, probes, "-probe")
    probe.publish(topics.renew_request(me), b"{}")
    assert witness.received(topics.renew_request(me)) == [b"{}"]
    assert probe.subscribe(topics.renew_response(me))
    witness.publish(topics.renew_response(me), b"yours")
    assert b"yours" in probe.received(topics.renew_response(me))


def test_nobody_can_write_the_tree_a_device_may_read_under_its_own_name(
    hub: Hub, two_devices: list[Appliance], probes: list[Probe]
) -> None:
    """The hub reads the fleet through ``pattern read %u/#`` (its name is the topic root), so
    every device may read ``<its id>/#``: that tree must stay empty. Neither the device, nor
    another device, nor the hub can publish there."""
    me, other = two_devices
    tree = f"{device_id_of(me)}/x"
    reader = device_probe(me, hub, probes, "-reader")
    assert reader.subscribe(f"{device_id_of(me)}/#")
    writers = [device_probe(a, hub, probes, "-probe") for a in (me, other)]
    for writer in [*writers, hub_probe(hub, probes)]:
        writer.publish(tree, b"planted")
    assert reader.received(tree, timeout=1.0) == []
