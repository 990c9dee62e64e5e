"""Bad enrollment requests each get a precise refusal, and the hub keeps serving everyone."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from appliance import identity, topics
from appliance.mqtt import publish_properties
from tests.support.fleet import Appliance, Hub
from tests.support.probe import Probe


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Path, dict]]:
    root = tmp_path_factory.mktemp("enroll")
    hub = Hub(root).start()
    bundle = hub.bundle(root / "site.spoke", "--max-uses", "50")
    payload = json.loads(base64.b64decode(json.loads(bundle.read_text())["payload"]))
    try:
        yield hub, bundle, payload
    finally:
        hub.stop()


@pytest.fixture
def claim_client(site: tuple[Hub, Path, dict], tmp_path: Path) -> Iterator[Probe]:
    hub, _, payload = site
    (tmp_path / "claim.crt").write_text(payload["claim"]["certificate"])
    (tmp_path / "claim.key").write_text(payload["claim"]["key"])
    probe = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        tmp_path / "claim.crt",
        tmp_path / "claim.key",
        "tester",
    )
    assert probe.connect()
    assert probe.subscribe(topics.enroll_response("tester"))
    yield probe
    probe.close()


def ask(probe: Probe, raw: bytes) -> dict:
    probe.publish(
        topics.ENROLL_REQUEST,
        raw,
        properties=publish_properties(topics.enroll_response("tester"), b"corr"),
    )
    answers = probe.received(topics.enroll_response("tester"), timeout=5)
    assert len(answers) == 1, answers
    return json.loads(answers[0])


def request(payload: dict, csr: bytes, **override: object) -> bytes:
    body = {
        "protocol": 1,
        "claim_id": payload["claim"]["id"],
        "claim_token": payload["claim"]["token"],
        "csr": csr.decode(),
        "software_version": "test",
    } | override
    return json.dumps(body).encode()


def test_garbage_payload_is_refused_as_malformed(claim_client: Probe) -> None:
    answer = ask(claim_client, b"\x00\x01 this is not json")
    assert answer["status"] == "refused" and answer["code"] == "malformed"


def test_oversized_payload_is_refused_as_too_large(claim_client: Probe) -> None:
    answer = ask(claim_client, b"{" + b" " * (70 * 1024) + b"}")
    assert answer["code"] == "too-large"
    assert "exceeds" in answer["reason"]


def test_csr_whose_key_does_not_match_its_signature_is_refused(
    site: tuple[Hub, Path, dict], claim_client: Probe
) -> None:
    signer, other = identity.generate_key(), identity.generate_key()
    csr_pem = identity.build_csr(signer, {})
    csr_der = identity.load_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    swapped = csr_der.replace(
        identity.public_key_der(signer.public_key()), identity.public_key_der(other.public_key())
    )
    assert swapped != csr_der
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(swapped)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    answer = ask(claim_client, request(site[2], pem))
    assert answer["code"] == "csr-key-mismatch"


def test_csr_asking_for_another_devices_name_is_refused(
    site: tuple[Hub, Path, dict], claim_client: Probe
) -> None:
    victim = identity.device_id_for(identity.generate_key().public_key())
    mine = identity.generate_key()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, victim)]))
        .sign(mine, hashes.SHA256())
    )
    answer = ask(claim_client, request(site[2], csr.public_bytes(serialization.Encoding.PEM)))
    assert answer["code"] == "name-mismatch"
    assert victim in answer["reason"]


def test_wrong_claim_token_is_refused(site: tuple[Hub, Path, dict], claim_client: Probe) -> None:
    csr = identity.build_csr(identity.generate_key(), {})
    answer = ask(claim_client, request(site[2], csr, claim_token="x" * 32))
    assert answer["code"] == "bad-claim-token"


def test_request_without_a_valid_response_topic_gets_no_answer_anywhere(
    site: tuple[Hub, Path, dict], claim_client: Probe
) -> None:
    """The hub may write anywhere; it must not be usable to write where a client says."""
    hub = site[0]
    witness = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        hub.home / "hub" / "hub.crt",
        hub.home / "hub" / "hub.key",
        "witness-topic",
    )
    assert witness.connect() and witness.subscribe("spoke/v1/#")
    try:
        csr = identity.build_csr(identity.generate_key(), {})
        claim_client.publish(
            topics.ENROLL_REQUEST,
            request(site[2], csr),
            properties=publish_properties("spoke/v1/dev-x/desired", b"c"),
        )
        assert witness.received("spoke/v1/dev-x/desired", timeout=3) == []
    finally:
        witness.close()


def test_hub_keeps_serving_good_devices_after_bad_requests(
    site: tuple[Hub, Path, dict], claim_client: Probe, tmp_path: Path
) -> None:
    hub, bundle, _ = site
    for junk in (b"", b"[]", b"{}", b"\xff" * 100):
        assert ask(claim_client, junk)["status"] == "refused"
    good = Appliance(tmp_path, hub, "good")
    try:
        good.start(bundle)
        hub.wait_availability(good.wait_enrolled(), "online")
    finally:
        good.kill()
