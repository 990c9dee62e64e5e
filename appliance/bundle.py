"""Provisioning bundles: what a hub gives an appliance to enroll itself, signed with Ed25519.

On disk a bundle is one JSON document: the payload (itself JSON, base64-encoded so the signed
bytes are exactly the bytes verified), the signature and the id of the signing key.
"""

import base64
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance import identity
from appliance.errors import BundleError, IdentityError

FORMAT = "spoke-bundle/1"
MAX_BUNDLE_BYTES = 256 * 1024


class HubAddress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    mqtt_port: int
    http_port: int


class ClaimCredential(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    token: str
    certificate: str
    key: str


class BundlePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hub: HubAddress
    ca_certificate: str
    claim: ClaimCredential
    labels: dict[str, str] = {}
    created_at: float
    expires_at: float
    max_uses: int = Field(gt=0)
    tuf_root: str | None = None
    #: Where the appliance downloads models (TUF metadata and targets): None is the hub's own
    #: ``https://HOST:HTTP_PORT/repository``; or the S3-compatible store itself, or a CDN in
    #: front of it. TUF verifies whatever serves them.
    repository_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def sign_bundle(payload: BundlePayload, key: identity.ed25519.Ed25519PrivateKey) -> bytes:
    # Unset optional fields are left out, so an appliance older than one of them still reads
    # a bundle that does not use it.
    raw = payload.model_dump_json(exclude_none=True).encode()
    doc = {
        "format": FORMAT,
        "key_id": identity.key_fingerprint(key.public_key()),
        "payload": base64.b64encode(raw).decode(),
        "signature": identity.sign(key, raw),
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def verify_bundle(data: bytes, trusted: identity.ed25519.Ed25519PublicKey) -> BundlePayload:
    """Return the payload of a bundle signed by ``trusted``; BundleError says what is wrong."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle refused: larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(data)
        raw = base64.b64decode(doc["payload"], validate=True)
        signature = doc["signature"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError("bundle refused: not a Spoke bundle (unreadable or unsigned)") from exc
    if doc.get("format") != FORMAT:
        raise BundleError(f"bundle refused: unknown format {doc.get('format')!r}")
    if not isinstance(signature, str) or not identity.signature_valid(trusted, raw, signature):
        if doc.get("key_id") != identity.key_fingerprint(trusted):
            raise BundleError(
                f"bundle refused: signed by another key ({doc.get('key_id')}), "
                f"this appliance trusts {identity.key_fingerprint(trusted)}"
            )
        raise BundleError("bundle refused: bad signature (the bundle was altered)")
    try:
        payload = BundlePayload.model_validate_json(raw)
    except ValidationError as exc:
        raise BundleError(f"bundle refused: signed payload is malformed: {exc}") from exc
    if payload.expired():
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(payload.expires_at))
        raise BundleError(f"bundle refused: expired at {when}; ask the hub for a new one")
    return payload


def load_trust_key(path: Path) -> identity.ed25519.Ed25519PublicKey:
    try:
        return identity.load_verify_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(
            f"no trusted provisioning key at {path}; pass --trust-key "
            "(the output of `spoke-hub bundle pubkey`)"
        ) from exc
    except IdentityError as exc:
        raise BundleError(f"{path}: {exc}") from exc
