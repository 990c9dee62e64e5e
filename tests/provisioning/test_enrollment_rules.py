"""The pure enrollment core: every refusal rule, without sockets."""

import time

import pytest

from appliance import identity
from appliance.payloads import EnrollRequest
from provisioning.enrollment import Refusal, check_server_names, decide, hub_names, parse_request
from provisioning.registry import Claim, Device, token_hash

TOKEN = "a-good-claim-token-123"


def claim(**over: object) -> Claim:
    base = dict(
        id="c1",
        token_sha256=token_hash(TOKEN),
        labels={"site": "s"},
        created_at=0.0,
        expires_at=time.time() + 3600,
        max_uses=2,
        cert_serial=1,
        revoked_at=None,
        uses=0,
    )
    return Claim(**(base | over))  # type: ignore[arg-type]


def request(key: identity.PrivateKey | None = None, token: str = TOKEN) -> EnrollRequest:
    key = key or identity.generate_key()
    return EnrollRequest(
        claim_id="c1",
        claim_token=token,
        csr=identity.build_csr(key, {"cpu_count": 4}).decode(),
        software_version="t",
    )


def device(device_id: str, **over: object) -> Device:
    base = dict(
        id=device_id,
        claim_id="c1",
        labels={},
        facts={},
        cert_serial=2,
        enrolled_at=0.0,
        revoked_at=None,
        availability="online",
        last_seen=None,
        software_version=None,
        state=None,
    )
    return Device(**(base | over))  # type: ignore[arg-type]


def refusal_code(fn: object, *args: object) -> str:
    with pytest.raises(Refusal) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code


def test_good_request_is_granted_with_facts() -> None:
    grant = decide(request(), claim(), None, time.time())
    assert grant.device_id.startswith("dev-") and grant.facts == {"cpu_count": 4}


def test_unknown_claim() -> None:
    assert refusal_code(decide, request(), None, None, time.time()) == "unknown-claim"


def test_bad_token() -> None:
    r = request(token="wrong-token-wrong-token")
    assert refusal_code(decide, r, claim(), None, time.time()) == "bad-claim-token"


def test_revoked_claim() -> None:
    c = claim(revoked_at=1.0)
    assert refusal_code(decide, request(), c, None, time.time()) == "claim-revoked"


def test_expired_claim() -> None:
    c = claim(expires_at=time.time() - 1)
    assert refusal_code(decide, request(), c, None, time.time()) == "claim-expired"


def test_exhausted_claim() -> None:
    c = claim(uses=2)
    assert refusal_code(decide, request(), c, None, time.time()) == "claim-exhausted"


def test_same_key_re_enrolls_without_using_a_slot() -> None:
    key = identity.generate_key()
    existing = device(identity.device_id_for(key.public_key()))
    grant = decide(request(key), claim(uses=2), existing, time.time())
    assert grant.reenrollment


def test_revoked_device_cannot_re_enroll() -> None:
    key = identity.generate_key()
    existing = device(identity.device_id_for(key.public_key()), revoked_at=1.0)
    assert refusal_code(decide, request(key), claim(), existing, time.time()) == "device-revoked"


def test_oversized_request() -> None:
    assert refusal_code(parse_request, b"x" * 100, 10) == "too-large"


def test_malformed_request() -> None:
    assert refusal_code(parse_request, b"{}", 1000) == "malformed"
    assert refusal_code(parse_request, b"\xff", 1000) == "malformed"


def test_unparseable_csr() -> None:
    r = EnrollRequest(claim_id="c1", claim_token=TOKEN, csr="not a csr", software_version="t")
    assert refusal_code(decide, r, claim(), None, time.time()) == "bad-csr"


def test_an_external_brokers_host_is_reserved_from_device_server_certificates() -> None:
    reserved = hub_names("hub.example.org", "mqtt.example.org")
    assert refusal_code(check_server_names, ["MQTT.example.org"], reserved) == "bad-server-name"
    assert refusal_code(check_server_names, ["localhost"], reserved) == "bad-server-name"


def test_a_loopback_broker_address_is_not_reserved_since_every_appliance_names_it() -> None:
    """An appliance listening on all addresses asks for 127.0.0.1 and ::1 (the regression:
    two hub processes on an external broker at 127.0.0.1 refused every enrollment)."""
    for broker in ("127.0.0.1", "::1"):
        names = ["box-7", "10.0.0.5", "127.0.0.1", "::1"]
        assert check_server_names(names, hub_names("hub.example.org", broker)) == names
