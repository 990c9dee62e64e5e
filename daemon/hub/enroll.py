"""The enrollment client: claim credential in, signed device identity out.

The device key is generated once and kept in the pending directory until the hub has signed
it, so a power loss at any point either finishes with the same key (the hub re-issues the same
id) or starts over cleanly; it never leaves a half-written identity.
"""

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import aiomqtt
from pydantic import ValidationError

from appliance import identity, keystore, mqtt, topics
from appliance.bundle import BundlePayload
from appliance.errors import EnrollmentRefused, IdentityError, LinkError
from appliance.fsutil import atomic_write, write_secret
from appliance.keystore import KeyStore
from appliance.payloads import EnrollAccepted, EnrollRefused, EnrollRequest
from daemon.state import Identity, StateDir, load_identity, save_identity

log = logging.getLogger(__name__)


def pending_key(state: StateDir, keys: KeyStore) -> identity.PrivateKey:
    """The key this enrollment uses: made once, kept as ``keys`` keeps keys (sealed by the
    TPM where there is one), reused after a restart."""
    if keystore.kind_in(state.pending) is not None:
        return keys.load(state.pending)
    key = identity.generate_key()
    keys.save(state.pending, key)
    return key


def _claim_tls(state: StateDir, bundle: BundlePayload) -> Any:
    d = state.pending
    atomic_write(d / "ca.crt", bundle.ca_certificate)
    atomic_write(d / "claim.crt", bundle.claim.certificate)
    write_secret(d / "claim.key", bundle.claim.key)
    return mqtt.tls_context(d / "ca.crt", d / "claim.crt", d / "claim.key")


def _parse_answer(raw: bytes) -> EnrollAccepted:
    try:
        doc = json.loads(raw)
        if doc.get("status") == "refused":
            refused = EnrollRefused.model_validate(doc)
            raise EnrollmentRefused(
                f"the hub refused enrollment ({refused.code}): {refused.reason}"
            )
        return EnrollAccepted.model_validate(doc)
    except (ValueError, ValidationError, AttributeError) as exc:
        raise LinkError(f"the hub sent an unreadable enrollment answer: {exc}") from exc


async def enroll(
    state: StateDir,
    bundle: BundlePayload,
    facts: dict[str, Any],
    software_version: str,
    timeout: float,
    keys: KeyStore,
    expired: Identity | None = None,
    server_names: list[str] | None = None,
) -> Identity:
    """Enroll once. LinkError: try again later. EnrollmentRefused: the hub said no.

    ``expired``: an identity whose certificate ran out while the device was offline; it
    re-enrolls under the same id with the same key (the hub knows that key for that id).
    """
    if expired is not None:
        key = await asyncio.to_thread(expired.private_key)  # may be a TPM round trip
        device_id = expired.device_id
    else:
        key = await asyncio.to_thread(pending_key, state, keys)
        device_id = identity.device_id_for(key.public_key())
    request = EnrollRequest(
        claim_id=bundle.claim.id,
        claim_token=bundle.claim.token,
        csr=identity.build_csr(key, facts, common_name=device_id).decode(),
        software_version=software_version,
        server_names=server_names or [],
    )
    response_topic = topics.enroll_response(device_id)
    correlation = secrets.token_bytes(16)
    address = (bundle.hub.host, bundle.hub.mqtt_port)
    try:
        async with mqtt.client(
            *address, device_id, _claim_tls(state, bundle), timeout=timeout
        ) as client:
            await mqtt.subscribe(client, response_topic,
                                 "the broker refused the claim credential's subscription")
            await client.publish(
                topics.ENROLL_REQUEST,
                request.model_dump_json(),
                qos=1,
                properties=mqtt.publish_properties(response_topic, correlation),
            )
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    props = message.properties
                    if getattr(props, "CorrelationData", None) != correlation:
                        continue
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    answer = _parse_answer(payload)
                    break
    except aiomqtt.MqttError as exc:
        raise LinkError(f"cannot reach the hub at {address[0]}:{address[1]}: {exc}") from exc
    except TimeoutError as exc:
        raise LinkError(f"the hub did not answer the enrollment within {timeout:.0f} s") from exc

    cert = identity.load_cert(answer.certificate.encode())
    ca_cert = identity.load_cert(bundle.ca_certificate.encode())
    identity.verify_issued_by(cert, ca_cert)
    if not identity.cert_matches_key(cert, key) or answer.device_id != device_id:
        raise IdentityError("the hub returned a certificate for another key")
    server_pem = identity.checked_server_cert(answer.server_certificate, ca_cert, key)
    await asyncio.to_thread(
        save_identity,
        state,
        keys,
        key,
        answer.certificate.encode(),
        bundle.ca_certificate.encode(),
        {
            "device_id": device_id,
            "labels": answer.labels,
            "hub_host": bundle.hub.host,
            "mqtt_port": bundle.hub.mqtt_port,
            "http_port": bundle.hub.http_port,
            "repository_url": bundle.repository_url,
            "claim_id": bundle.claim.id,
            "enrolled_at": time.time(),
        },
        server_pem,
    )
    enrolled = load_identity(state, keys)
    assert enrolled is not None
    log.info("enrolled", extra={"device": device_id})
    return enrolled
