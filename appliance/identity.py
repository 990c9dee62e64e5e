"""Keys, CSRs, certificates and signatures shared by the appliance and the hub.

Device keys are EC P-256 (what TPMs and TLS stacks everywhere support); bundle signing uses
Ed25519. A device id is derived from its public key, so the hub can check a CSR asks for the
name its key deserves and nobody else's.
"""

import base64
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID, ObjectIdentifier

from appliance.errors import IdentityError

# A private-arc OID for the hardware facts a device puts in its CSR (JSON, signed with the CSR).
HARDWARE_FACTS_OID = ObjectIdentifier("1.3.6.1.4.1.59999.1.1")

PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise IdentityError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError("expected an EC private key")
    return key


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def device_id_for(key: ec.EllipticCurvePublicKey) -> str:
    """``dev-`` and 20 hex digits of the SHA-256 of the public key: stable, unique, checkable."""
    return "dev-" + hashlib.sha256(public_key_der(key)).hexdigest()[:20]


def public_key_sha256(key: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(public_key_der(key)).hexdigest()


def build_csr(key: PrivateKey, facts: dict[str, Any], common_name: str | None = None) -> bytes:
    """A CSR carrying the hardware facts as an extension.

    Enrollment asks for the id the key deserves; a renewal passes the id the device already has
    (after a renewal with a new key, the id no longer derives from the key).
    """
    cn = common_name or device_id_for(key.public_key())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    facts_der = json.dumps(facts, sort_keys=True).encode()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.UnrecognizedExtension(HARDWARE_FACTS_OID, facts_der), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise IdentityError(f"not a PEM certificate signing request: {exc}") from exc


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise IdentityError("the CSR must have exactly one common name")
    return str(names[0].value)


def csr_facts(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    try:
        ext = csr.extensions.get_extension_for_oid(HARDWARE_FACTS_OID)
    except x509.ExtensionNotFound:
        return {}
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return {}
    try:
        facts = json.loads(value.value)
    except ValueError as exc:
        raise IdentityError("the CSR's hardware facts are not JSON") from exc
    if not isinstance(facts, dict):
        raise IdentityError("the CSR's hardware facts must be an object")
    return facts


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError(f"not a PEM certificate: {exc}") from exc


def cert_common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def cert_not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def renewal_due_at(cert: x509.Certificate, share: float) -> float:
    """When ``share`` of the certificate's lifetime has passed (epoch seconds)."""
    start = cert.not_valid_before_utc.timestamp()
    return start + share * (cert_not_after(cert) - start)


def cert_matches_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    pub = cert.public_key()
    return isinstance(pub, ec.EllipticCurvePublicKey) and public_key_der(pub) == public_key_der(
        key.public_key()
    )


def checked_server_cert(
    pem: str | None, ca: x509.Certificate, key: PrivateKey
) -> bytes | None:
    """The hub's server certificate for the device's API, if it is ours and for this key."""
    if pem is None:
        return None
    cert = load_cert(pem.encode())
    verify_issued_by(cert, ca)
    if not cert_matches_key(cert, key):
        raise IdentityError("the hub returned a server certificate for another key")
    return pem.encode()


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise IdentityError unless ``ca`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError("the certificate was not issued by the hub's CA") from exc


# --- Ed25519 signatures (provisioning bundles) -------------------------------------------------


def generate_signing_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def load_signing_key(pem: bytes) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError("expected an Ed25519 signing key")
    return key


def signing_public_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_verify_key(pem: bytes) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise IdentityError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise IdentityError("the trusted provisioning key must be an Ed25519 public key")
    return key


def key_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: ed25519.Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def signature_valid(key: ed25519.Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
