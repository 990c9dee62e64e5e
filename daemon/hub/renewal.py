"""Certificate renewal over the device's live mTLS session.

Before ``[hub] renew_at_share`` of its certificate's lifetime has passed, the device makes a
CSR for the id it already has (with a new key unless ``renew_new_key = false``), sends it on
its own renew topic with a response topic and correlation data, and checks the answer. The
new certificate is then *proven* with a second, short connection to the broker before it
replaces the current identity, so a bad answer never strands the device: until the swap, the
old identity stays in place and in use.
"""

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiomqtt
from pydantic import ValidationError

from appliance import __version__, identity, keystore, mqtt, topics
from appliance.errors import EnrollmentRefused, IdentityError, LinkError
from appliance.fsutil import atomic_write
from appliance.payloads import EnrollRefused, RenewAccepted, RenewRequest
from daemon.state import Identity, StateDir, save_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Renewed:
    """A proven new certificate, written in place of the old one."""

    serial: str
    previous_serial: str
    not_after: float


def renewal_key(state: StateDir, ident: Identity, new_key: bool) -> identity.PrivateKey:
    """The key to certify: made once per renewal (reused after a restart) and kept the way the
    identity's store keeps new keys (sealed by the TPM where there is one), or the current one.
    """
    if not new_key:
        return ident.private_key()
    if keystore.kind_in(state.renewing) is not None:
        return ident.keys.load(state.renewing)
    key = identity.generate_key()
    ident.keys.save(state.renewing, key)
    return key


def build_request(
    ident: Identity, key: identity.PrivateKey, server_names: list[str]
) -> RenewRequest:
    return RenewRequest(
        certificate=ident.cert.read_text(),
        csr=identity.build_csr(key, {}, common_name=ident.device_id).decode(),
        software_version=__version__,
        server_names=server_names,
    )


def parse_answer(raw: bytes) -> RenewAccepted:
    try:
        doc = json.loads(raw)
        if doc.get("status") == "refused":
            refused = EnrollRefused.model_validate(doc)
            raise EnrollmentRefused(f"the hub refused renewal ({refused.code}): {refused.reason}")
        return RenewAccepted.model_validate(doc)
    except (ValueError, ValidationError, AttributeError) as exc:
        raise LinkError(f"the hub sent an unreadable renewal answer: {exc}") from exc


def check_answer(
    ident: Identity, key: identity.PrivateKey, answer: RenewAccepted
) -> tuple[bytes, bytes | None]:
    """The new certificate's PEM (and the API's), if our CA issued it for this id and key."""
    cert_pem = answer.certificate.encode()
    cert = identity.load_cert(cert_pem)
    ca = identity.load_cert(ident.ca.read_bytes())
    identity.verify_issued_by(cert, ca)
    if not identity.cert_matches_key(cert, key):
        raise IdentityError("the hub returned a certificate for another key")
    if answer.device_id != ident.device_id or identity.cert_common_name(cert) != ident.device_id:
        raise IdentityError("the hub returned a certificate for another device")
    return cert_pem, identity.checked_server_cert(answer.server_certificate, ca, key)


async def prove(ident: Identity, state: StateDir, timeout: float) -> None:
    """Connect once with the candidate identity (in ``state.renewing``) and subscribe to our
    own desired topic: the broker accepting both is the proof that it works."""
    d = state.renewing
    key_path = await asyncio.to_thread(ident.keys.tls_path, d)  # may unseal (a TPM round trip)
    tls = mqtt.tls_context(ident.ca, d / "device.crt", key_path)
    try:
        async with mqtt.client(
            ident.hub_host, ident.mqtt_port, f"{ident.device_id}-renewal", tls, timeout=timeout
        ) as probe:
            await mqtt.subscribe(probe, topics.desired(ident.device_id),
                                 "the broker refused the renewed certificate's subscription",
                                 IdentityError)
    except aiomqtt.MqttError as exc:
        raise LinkError(f"the renewed certificate does not connect: {exc}") from exc


def swap_in(
    state: StateDir, ident: Identity, cert_pem: bytes, server_pem: bytes | None = None
) -> Renewed:
    """Make the proven candidate the identity (the old one moves to ``identity.previous``)."""
    d = state.renewing
    key = ident.keys.load(d)
    meta: dict[str, Any] = json.loads((state.identity / "identity.json").read_text())
    meta["renewed_at"] = time.time()
    previous = ident.certificate()
    save_identity(state, ident.keys, key, cert_pem, ident.ca.read_bytes(), meta, server_pem)
    cert = identity.load_cert(cert_pem)
    for leftover in d.iterdir():
        leftover.unlink()
    d.rmdir()
    return Renewed(
        serial=str(cert.serial_number),
        previous_serial=str(previous.serial_number),
        not_after=identity.cert_not_after(cert),
    )


class Exchange:
    """Request/response on the renew topics, fed by the hub link's message dispatch."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}

    async def on_message(self, message: aiomqtt.Message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        future = self._waiting.get(correlation) if isinstance(correlation, bytes) else None
        if future is not None and not future.done():
            future.set_result(message.payload if isinstance(message.payload, bytes) else b"")

    async def ask(
        self, client: aiomqtt.Client, device_id: str, request: RenewRequest, timeout: float
    ) -> bytes:
        response_topic = topics.renew_response(device_id)
        await mqtt.subscribe(client, response_topic,
                             "the broker refused the renew response topic (hub too old?)")
        correlation = secrets.token_bytes(16)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        try:
            await client.publish(
                topics.renew_request(device_id),
                request.model_dump_json(),
                qos=1,
                properties=mqtt.publish_properties(response_topic, correlation),
            )
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError as exc:
            raise LinkError(f"the hub did not answer the renewal within {timeout:.0f} s") from exc
        except aiomqtt.MqttError as exc:
            raise LinkError(f"renewal request failed: {exc}") from exc
        finally:
            self._waiting.pop(correlation, None)


async def renew(
    client: aiomqtt.Client,
    exchange: Exchange,
    state: StateDir,
    ident: Identity,
    new_key: bool,
    timeout: float,
    server_names: list[str],
) -> Renewed:
    """One renewal: ask, check, prove, swap. LinkError: retry later; EnrollmentRefused: no."""
    # Key work may be TPM round trips (tpm2-tools): off the event loop.
    key = await asyncio.to_thread(renewal_key, state, ident, new_key)
    request = build_request(ident, key, server_names)
    raw = await exchange.ask(client, ident.device_id, request, timeout)
    cert_pem, server_pem = check_answer(ident, key, parse_answer(raw))
    state.renewing.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not new_key:
        await asyncio.to_thread(ident.keys.save, state.renewing, key)
    atomic_write(state.renewing / "device.crt", cert_pem)
    await prove(ident, state, timeout)
    renewed = await asyncio.to_thread(swap_in, state, ident, cert_pem, server_pem)
    log.info(
        "certificate renewed",
        extra={"device": ident.device_id, "serial": renewed.serial, "not_after": renewed.not_after},
    )
    return renewed
