"""Enrollment decisions: a pure core that turns a request into a grant or a precise refusal.

No sockets here: the hub service feeds it bytes and registry rows, and sends what it returns.
"""

import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from appliance import identity
from appliance.errors import IdentityError
from appliance.payloads import EnrollRequest, RenewRequest
from provisioning.registry import Claim, Device, DeviceCert, token_hash


class Refusal(Exception):
    """A refusal with a stable machine code and a reason a technician can act on."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    device_id: str
    claim: Claim
    csr: x509.CertificateSigningRequest
    facts: dict[str, Any] = field(default_factory=dict)
    reenrollment: bool = False


def parse_request(raw: bytes, max_bytes: int) -> EnrollRequest:
    if len(raw) > max_bytes:
        raise Refusal("too-large", f"enrollment request of {len(raw)} bytes exceeds {max_bytes}")
    try:
        return EnrollRequest.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise Refusal("malformed", f"enrollment request is not valid: {first}") from exc


def check_claim(request: EnrollRequest, claim: Claim | None, now: float) -> Claim:
    if claim is None:
        raise Refusal("unknown-claim", f"claim {request.claim_id!r} is not known to this hub")
    if not hmac.compare_digest(claim.token_sha256, token_hash(request.claim_token)):
        raise Refusal("bad-claim-token", "the claim token does not match")
    check_open(claim, now)
    return claim


def check_open(claim: Claim, now: float) -> None:
    """A claim enrolls only until it is revoked or expires."""
    if claim.revoked_at is not None:
        raise Refusal("claim-revoked", f"claim {claim.id} was revoked; ask for a new bundle")
    if now >= claim.expires_at:
        raise Refusal("claim-expired", f"claim {claim.id} has expired; ask for a new bundle")


def check_room(claim: Claim) -> None:
    """A new device takes one of the claim's ``max_uses``; a device enrolling again, none."""
    if claim.uses >= claim.max_uses:
        raise Refusal(
            "claim-exhausted",
            f"claim {claim.id} has enrolled its maximum of {claim.max_uses} devices",
        )


def read_csr(pem: str) -> tuple[str, x509.CertificateSigningRequest, dict[str, Any]]:
    """Return (common name, CSR, hardware facts) of a CSR signed by its own key (EC P-256)."""
    try:
        csr = identity.load_csr(pem.encode())
        valid = csr.is_signature_valid
        name = identity.csr_common_name(csr)
        facts = identity.csr_facts(csr)
        key = csr.public_key()
    except (IdentityError, ValueError) as exc:
        raise Refusal("bad-csr", f"the CSR cannot be read: {exc}") from exc
    if not valid:
        raise Refusal("csr-key-mismatch", "the CSR's signature does not match its public key")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Refusal("bad-csr", "the CSR's key must be an EC P-256 key")
    return name, csr, facts


def csr_key_sha256(csr: x509.CertificateSigningRequest) -> str:
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # read_csr checked it
    return identity.public_key_sha256(key)


def check_csr(
    request: EnrollRequest, known_key: str | None = None
) -> tuple[str, x509.CertificateSigningRequest, dict[str, Any]]:
    """Return (device id, CSR, hardware facts) for a CSR whose key deserves that id.

    A key deserves the id derived from it, or the id whose current certificate holds that key
    (``known_key``, the SHA-256 of that key): a device renewed with a new key keeps its id.
    """
    name, csr, facts = read_csr(request.csr)
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    expected = identity.device_id_for(key)
    if name != expected and known_key != identity.public_key_sha256(key):
        raise Refusal(
            "name-mismatch", f"the CSR asks for the name {name!r}, but its key is {expected!r}"
        )
    return name, csr, facts


def decide(
    request: EnrollRequest,
    claim: Claim | None,
    existing: Device | None,
    now: float,
    known_key: str | None = None,
) -> Grant:
    """Grant or refuse. A device re-enrolling with the same key keeps its id and uses no slot.

    ``known_key``: the key SHA-256 of the current certificate of the device the CSR names, so
    a device whose certificate expired offline re-enrolls under its id with its claim.
    """
    claim = check_claim(request, claim, now)
    device_id, csr, facts = check_csr(request, known_key)
    if existing is not None:
        if existing.revoked_at is not None:
            raise Refusal("device-revoked", f"device {device_id} has been revoked")
        # Another valid claim may re-enroll a device only with the key the hub last certified.
        if existing.claim_id != claim.id and known_key != csr_key_sha256(csr):
            raise Refusal("name-mismatch", f"device {device_id} was enrolled by another claim")
        return Grant(device_id, claim, csr, facts, reenrollment=True)
    check_room(claim)
    return Grant(device_id, claim, csr, facts)


@dataclass(frozen=True)
class RenewalGrant:
    device_id: str
    csr: x509.CertificateSigningRequest
    key_sha256: str


def parse_renewal(raw: bytes, max_bytes: int) -> RenewRequest:
    if len(raw) > max_bytes:
        raise Refusal("too-large", f"renewal request of {len(raw)} bytes exceeds {max_bytes}")
    try:
        return RenewRequest.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise Refusal("malformed", f"renewal request is not valid: {first}") from exc


def decide_renewal(
    topic_device: str,
    request: RenewRequest,
    ca_cert: x509.Certificate,
    device: Device | None,
    held: DeviceCert | None,
    now: float,
) -> RenewalGrant:
    """Renew only a valid, unrevoked, unexpired certificate of the device the topic names.

    ``topic_device`` comes from the renew topic, which the broker's ACL binds to the
    connection's certificate common name; ``held`` is the registry's row for the serial of
    the certificate in the request.
    """
    try:
        cert = identity.load_cert(request.certificate.encode())
        identity.verify_issued_by(cert, ca_cert)
    except IdentityError as exc:
        raise Refusal("bad-certificate", f"the presented certificate is not ours: {exc}") from exc
    name = identity.cert_common_name(cert)
    if name != topic_device:
        raise Refusal("name-mismatch", f"certificate {name!r} cannot renew {topic_device!r}")
    if device is None:
        raise Refusal("unknown-device", f"device {topic_device} is not enrolled here")
    if device.revoked_at is not None:
        raise Refusal("device-revoked", f"device {topic_device} has been revoked")
    if held is None or held.device_id != topic_device:
        raise Refusal("unknown-certificate", "the hub never issued that certificate to it")
    if held.retired_at is not None:
        raise Refusal("certificate-retired", "that certificate was already replaced by a renewal")
    if now >= identity.cert_not_after(cert):
        raise Refusal("certificate-expired", "the certificate has expired; re-enroll with a bundle")
    csr_name, csr, _ = read_csr(request.csr)
    if csr_name != topic_device:
        raise Refusal("name-mismatch", f"the CSR asks for {csr_name!r}, not {topic_device!r}")
    return RenewalGrant(topic_device, csr, csr_key_sha256(csr))


def hub_names(public_host: str, broker_host: str | None) -> set[str]:
    """The names a device's API certificate may not hold: the hub's public host, ``localhost``
    and an external broker's host, unless that is a loopback address. A loopback address
    names whichever host reads it, so a certificate for it stands in for no hub elsewhere, and
    every appliance listening on all addresses asks for 127.0.0.1 and ::1: reserving them
    refused every enrollment on a hub whose external broker runs on its own host."""
    names = {public_host.lower(), "localhost"}
    if broker_host and not _is_loopback(broker_host):
        names.add(broker_host.lower())
    return names


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_names(names: list[str], reserved: set[str]) -> list[str]:
    """Names for a device's API certificate, never one the hub itself answers on.

    Devices check the hub's certificate against the same CA, so a device holding a server
    certificate for the hub's name could stand in for the hub.
    """
    taken = sorted({n for n in names if n.lower() in reserved})
    if taken:
        raise Refusal("bad-server-name", f"the hub's own names cannot be asked for: {taken}")
    return names


def refusal_payload(refusal: Refusal) -> bytes:
    return json.dumps(
        {"status": "refused", "code": refusal.code, "reason": refusal.reason}
    ).encode()
