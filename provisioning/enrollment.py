"""Enrollment decisions: a pure core that turns a request into a grant or a precise refusal.

No sockets here: the hub service feeds it bytes and registry rows, and sends what it returns.
"""

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from appliance import identity
from appliance.errors import IdentityError
from appliance.payloads import EnrollRequest
from provisioning.registry import Claim, Device, token_hash


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
    if claim.revoked_at is not None:
        raise Refusal("claim-revoked", f"claim {claim.id} was revoked; ask for a new bundle")
    if now >= claim.expires_at:
        raise Refusal("claim-expired", f"claim {claim.id} has expired; ask for a new bundle")
    return claim


def check_csr(request: EnrollRequest) -> tuple[str, x509.CertificateSigningRequest, dict[str, Any]]:
    """Return (device id, CSR, hardware facts) for a CSR whose key deserves that id."""
    try:
        csr = identity.load_csr(request.csr.encode())
        valid = csr.is_signature_valid
        name = identity.csr_common_name(csr)
        facts = identity.csr_facts(csr)
        key = csr.public_key()
    except (IdentityError, ValueError) as exc:
        raise Refusal("bad-csr", f"the CSR cannot be read: {exc}") from exc
    if not valid:
        raise Refusal("csr-key-mismatch", "the CSR's signature does not match its public key")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Refusal("bad-csr", "the CSR's key must be an EC P-256 key")
    expected = identity.device_id_for(key)
    if name != expected:
        raise Refusal(
            "name-mismatch", f"the CSR asks for the name {name!r}, but its key is {expected!r}"
        )
    return expected, csr, facts


def decide(
    request: EnrollRequest,
    claim: Claim | None,
    existing: Device | None,
    now: float,
) -> Grant:
    """Grant or refuse. A device re-enrolling with the same key keeps its id and uses no slot."""
    claim = check_claim(request, claim, now)
    device_id, csr, facts = check_csr(request)
    if existing is not None:
        if existing.revoked_at is not None:
            raise Refusal("device-revoked", f"device {device_id} has been revoked")
        if existing.claim_id != claim.id:
            raise Refusal("name-mismatch", f"device {device_id} was enrolled by another claim")
        return Grant(device_id, claim, csr, facts, reenrollment=True)
    if claim.uses >= claim.max_uses:
        raise Refusal(
            "claim-exhausted",
            f"claim {claim.id} has enrolled its maximum of {claim.max_uses} devices",
        )
    return Grant(device_id, claim, csr, facts)


def refusal_payload(refusal: Refusal) -> bytes:
    return json.dumps(
        {"status": "refused", "code": refusal.code, "reason": refusal.reason}
    ).encode()
