"""The hub service: answers enrollments and keeps the registry's view of the fleet current."""

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

import aiomqtt
from cryptography import x509

from appliance import identity, mqtt, topics
from appliance.config import HubConfig
from appliance.errors import IdentityError, LinkError
from appliance.health import HealthSnapshot
from appliance.payloads import (
    AVAILABLE_OFFLINE,
    AVAILABLE_ONLINE,
    AVAILABLE_STOPPED,
    Event,
    EventAck,
    EventRef,
    RenewAccepted,
    ReportedState,
)
from appliance.service import TaskGroupService
from provisioning import broker, ca, enrollment, leader, metrics
from provisioning.home import HubHome, ensure_hub_cert
from provisioning.registry import Enrolled, EnrollmentRecords, HealthReport, Registry

log = logging.getLogger(__name__)

AVAILABILITY = {
    AVAILABLE_ONLINE: "online",
    AVAILABLE_STOPPED: "stopped",
    AVAILABLE_OFFLINE: "offline",
}
MAX_DEVICE_MESSAGE_BYTES = 256 * 1024
HUB_CLIENT_ID = "spoke-hub"
HUB_SESSION_EXPIRY_S = 7 * 86400  # how long the broker keeps the hub's messages while it is away
#: The shared-subscription group of all hub processes of one fleet.
SHARE = "$share/spoke-hub"
ACK_BATCH_S = 0.2
MAX_ACK_IDS = 1000
#: Most messages handled (and health reports written in one transaction) as one batch.
MAX_BATCH = 500
#: Enrollments granted at once by one process on PostgreSQL.
GRANTS_AT_ONCE = 8


#: What every hub process subscribes to. Enrollments, renewals, health and events are split
#: between the processes (an MQTT 5 shared subscription: each message goes to one of them).
#: Presence and state are retained, and written idempotently, so every process takes them
#: whole: a process that starts late still gets the retained ones, which shared subscriptions
#: do not deliver.
SUBSCRIPTIONS = (
    *(
        f"{SHARE}/{t}"
        for t in (
            topics.ENROLL_REQUEST,
            topics.ALL_RENEW_REQUESTS,
            topics.ALL_HEALTH,
            topics.ALL_EVENTS,
        )
    ),
    topics.ALL_AVAILABLE,
    topics.ALL_STATE,
)


def client_id(instance: str) -> str:
    """The MQTT client id (and so the persistent session) of a hub process."""
    return f"{HUB_CLIENT_ID}-{instance}" if instance else HUB_CLIENT_ID


def ack_when_handled(client: aiomqtt.Client) -> aiomqtt.Client:
    """QoS 1 messages acknowledged once handled, not on receipt (before connecting: a resumed
    session delivers at once): a message a hub process dies holding stays in its session, for
    it or for whoever ends that session (provisioning.sessions). aiomqtt has no switch for
    this; paho, underneath it, has."""
    client._client.manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    client._client.ack(message.mid, message.qos)


def broker_address(config: HubConfig) -> tuple[str, int]:
    if config.broker.mode == "external":
        return config.broker.host, config.broker.port or config.hub.mqtt_port
    host = config.hub.bind_host
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), config.hub.mqtt_port


def hub_tls(home: HubHome, config: HubConfig) -> Any:
    b = config.broker
    if b.mode == "external" and b.ca and b.cert and b.key:
        from pathlib import Path

        return mqtt.tls_context(Path(b.ca), Path(b.cert), Path(b.key))
    ensure_hub_cert(home)
    return mqtt.tls_context(home.ca_cert, home.hub_cert, home.hub_key)


class HubService(TaskGroupService):
    """One MQTT session for the hub, re-established with backoff when the broker goes away."""

    name = "hub"

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        super().__init__()
        self.home = home
        self.config = config
        self.registry = registry
        self.session = mqtt.Session(
            self._connect, SUBSCRIPTIONS, mqtt.Backoff(0.5, 10.0), retry_on=(aiomqtt.MqttError,),
            refused="the broker refused the hub's subscription to {topic}")
        self.enrollments = 0
        #: Counts broker sessions, so a publisher of retained state knows to send it again.
        self.sessions = 0
        #: Event ids stored (or refused for good) per device, acknowledged in batches.
        self._to_ack: dict[str, list[str]] = {}
        self._ack_due = asyncio.Event()
        self._instance_lock: leader.Lock | None = None
        postgres = registry.engine.dialect.name == "postgresql"
        self._granting = asyncio.Semaphore(GRANTS_AT_ONCE if postgres else 1)

    @property
    def connected(self) -> asyncio.Event:
        """Set while the hub's session is up (its subscriptions granted)."""
        return self.session.connected

    async def start(self) -> None:
        self.spawn(self._run(), "mqtt")
        self.spawn(self._acknowledge_events(), "event-acks")

    async def stop(self) -> None:
        await self.cancel_tasks()
        if self._instance_lock is not None:
            await asyncio.to_thread(self._instance_lock.release)

    async def _claim_instance(self) -> None:
        """A named process holds its instance's lock for life and is listed in the registry, so
        the singleton ends its MQTT session once it stops (provisioning.sessions): what the
        broker queued for it then reaches the registry. A second process of the name waits."""
        instance = self.config.hub.instance
        if not instance:
            return
        lock = leader.instance_lock(self.registry.engine, instance)
        self._instance_lock = lock
        waiting = False
        while not await asyncio.to_thread(lock.try_acquire):
            if not waiting:
                log.warning("waiting for this instance's lock", extra={"instance": instance})
                waiting = True
            await asyncio.sleep(leader.RETRY_S)
        await asyncio.to_thread(self.registry.add_hub_process, instance)

    def _connect(self) -> aiomqtt.Client:
        # A persistent session under a fixed id: what devices publish while the hub is down or
        # being redeployed waits in the broker (found by the fault scenarios "hub killed -9 and
        # restarted" and "hub redeployed": events were lost). Each of several hub processes has
        # its own ([hub] instance), or they would take over each other's session.
        host, port = broker_address(self.config)
        return ack_when_handled(mqtt.client(
            host, port, client_id(self.config.hub.instance), hub_tls(self.home, self.config),
            session_expiry_s=HUB_SESSION_EXPIRY_S,
        ))

    async def _run(self) -> None:
        """The broker session; a refused subscription (``LinkError``) ends the hub."""
        await self._claim_instance()
        await self.session.run(self._serve, self._down)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self.sessions += 1
        host, port = broker_address(self.config)
        log.info("hub connected to broker", extra={"host": host, "port": port})
        await self.consume(client)

    @staticmethod
    def _down(exc: Exception, delay: float) -> None:
        log.warning("broker connection lost", extra={"error": str(exc), "retry_s": delay})

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish on the hub's session, or raise LinkError while the broker is unreachable."""
        await self.session.publish(topic, payload, retain=retain,
                                   down="the hub is not connected to the broker")

    async def consume(self, client: aiomqtt.Client, quiet_s: float | None = None) -> int:
        """Handle ``client``'s messages in batches until it has been quiet for ``quiet_s``
        (None: for as long as it is connected); returns how many it handled.

        A batch is what waits when the previous one is done (at most MAX_BATCH): one message
        at low load, more the busier the fleet. Its health reports are written in one
        transaction in a worker thread, so the broker's socket is read meanwhile and the next
        batch forms. Each message is acknowledged once its batch is stored, in the order
        received (the MQTT 5 rule), so one that a process dies holding stays in its session."""
        messages = client.messages
        count = 0
        while True:
            try:
                batch = [await asyncio.wait_for(anext(messages), quiet_s)]
            except TimeoutError:
                return count
            while len(messages) and len(batch) < MAX_BATCH:
                batch.append(await anext(messages))
            await self.handle(client, batch)
            for message in batch:
                ack(client, message)
            count += len(batch)

    async def handle(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        """Store a batch: its health reports together, every other message one by one in the
        order received. Health reports touch only their own rows (one per device and taken-at
        time) and ``last_seen``, so storing them after the others changes nothing. Enrollments
        are answered side by side (GRANTS_AT_ONCE on PostgreSQL, where each takes its claim's
        use in one guarded UPDATE, Registry.enroll; one at a time on SQLite): each is mostly
        waiting on the registry."""
        reports = []
        at_once: list[Awaitable[object]] = []
        for message in batch:
            if not self._fits(message):
                continue
            if message.topic.matches(topics.ALL_HEALTH):
                report = self._health_report(message)
                if report is not None:
                    reports.append(report)
            elif message.topic.value == topics.ENROLL_REQUEST:
                at_once.append(self._dispatch(client, message))
            else:
                await self._dispatch(client, message)
        if reports:
            at_once.append(asyncio.to_thread(self.registry.add_health_reports, reports))
        await asyncio.gather(*at_once)

    def _fits(self, message: aiomqtt.Message) -> bool:
        """The one size check of device reports (availability, state, health, events): one
        past ``MAX_DEVICE_MESSAGE_BYTES`` is refused (logged and counted) before it is parsed.
        Enrollment and renewal requests are let through: they refuse their own, smaller
        limit (``[enrollment] max_request_bytes``) with an answer to the asker."""
        topic = message.topic
        payload = message.payload
        if (not isinstance(payload, bytes) or len(payload) <= MAX_DEVICE_MESSAGE_BYTES
                or topic.value == topics.ENROLL_REQUEST
                or topic.matches(topics.ALL_RENEW_REQUESTS)):
            return True
        self._refuse(topic.value, "oversized", f"{len(payload)} bytes")
        return False

    def _health_report(self, message: aiomqtt.Message) -> HealthReport | None:
        """A health report checked and serialized for the registry, or None when refused
        (logged and counted). Whether its device is enrolled the registry checks, per batch."""
        topic = message.topic.value
        device_id = topics.device_of(topic)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if device_id is None:
            return None
        try:
            snapshot = HealthSnapshot.model_validate_json(payload)
        except (ValueError, TypeError, RecursionError) as exc:
            self._refuse(topic, "malformed", str(exc))
            return None
        return HealthReport(device_id, snapshot.taken_at_s, snapshot.model_dump_json())

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Take one device message other than a health report (those ``handle`` stores per
        batch), its size already checked there; ``client`` answers enrollments and renewals."""
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            if topic == topics.ENROLL_REQUEST:
                await self._enroll(client, message, payload)
                return
            device_id = topics.device_of(topic)
            if device_id and message.topic.matches(topics.ALL_RENEW_REQUESTS):
                await self._renew(client, message, device_id, payload)
                return
            device = self.registry.device(device_id) if device_id else None
            if device is None or device.revoked_at is not None:
                return
            if message.topic.matches(topics.ALL_AVAILABLE):
                if payload and payload not in AVAILABILITY:
                    self._refuse(topic, "malformed", f"availability {payload[:40]!r}")
                self.registry.set_availability(device.id, AVAILABILITY.get(payload, "unknown"))
            elif message.topic.matches(topics.ALL_STATE) and payload:
                reported = ReportedState.model_validate_json(payload)
                if reported.device_id != device.id:
                    raise ValueError(f"the state names {reported.device_id}, not its sender")
                state = reported.model_dump(mode="json")
                self.registry.set_state(device.id, state, reported.seq)
                self._retire_replaced(device.id, state)
            elif message.topic.matches(topics.ALL_EVENTS):
                self._take_event(device.id, json.loads(payload))
        except (ValueError, TypeError, RecursionError) as exc:
            self._refuse(topic, "malformed", str(exc))

    def _take_event(self, device_id: str, data: object) -> None:
        """Store one event and acknowledge it. A refused event that names a plain id is
        acknowledged as well: sending it again will not make it valid."""
        try:
            event = Event.model_validate(data)
            self.registry.add_event(device_id, event.model_dump(mode="json"))
        except (ValueError, TypeError, RecursionError):
            with contextlib.suppress(ValueError):
                self._ack(device_id, EventRef.model_validate(data).id)
            raise
        self._ack(device_id, event.id)

    def _ack(self, device_id: str, event_id: str) -> None:
        self._to_ack.setdefault(device_id, []).append(event_id)
        self._ack_due.set()

    async def _acknowledge_events(self) -> None:
        """Tell each device which of its events are stored, a batch at most every
        ``ACK_BATCH_S``. A lost acknowledgement costs only a redelivery, which the registry
        ignores and acknowledges again, so nothing here is retried."""
        while True:
            await self._ack_due.wait()
            await asyncio.sleep(ACK_BATCH_S)
            self._ack_due.clear()
            batch, self._to_ack = self._to_ack, {}
            for device_id, ids in batch.items():
                for start in range(0, len(ids), MAX_ACK_IDS):
                    ack = EventAck(ids=ids[start:start + MAX_ACK_IDS])
                    try:
                        await self.publish(topics.events_ack(device_id), ack.model_dump_json())
                    except LinkError as exc:
                        log.info("event acknowledgement not sent; the device will resend",
                                 extra={"device": device_id, "error": str(exc)})

    @staticmethod
    def _refuse(topic: str, reason: str, detail: str) -> None:
        """Every device message the hub does not take is logged and counted (by topic kind)."""
        kind = topic.rsplit("/", 1)[-1]
        metrics.MESSAGES_REFUSED.labels(kind, reason).inc()
        log.warning("refused a device message",
                    extra={"topic": topic, "reason": reason, "error": detail[:300]})

    @staticmethod
    def _response_route(message: aiomqtt.Message) -> tuple[object, object]:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        return response_topic, correlation

    async def _answer(
        self, client: aiomqtt.Client, topic: str, answer: bytes, correlation: object
    ) -> None:
        await client.publish(
            topic,
            answer,
            qos=1,
            properties=mqtt.publish_properties(
                correlation=correlation if isinstance(correlation, bytes) else None
            ),
        )

    async def _enroll(self, client: aiomqtt.Client, message: aiomqtt.Message, raw: bytes) -> None:
        response_topic, correlation = self._response_route(message)
        if not isinstance(response_topic, str) or not topics.is_enroll_response(response_topic):
            log.warning(
                "enrollment request without a valid response topic; dropped",
                extra={"response_topic": response_topic},
            )
            return
        try:
            async with self._granting:
                answer = await asyncio.to_thread(self._grant, raw)
            self.enrollments += 1
        except enrollment.Refusal as refusal:
            log.warning(
                "enrollment refused", extra={"code": refusal.code, "reason": refusal.reason}
            )
            answer = enrollment.refusal_payload(refusal)
        await self._answer(client, response_topic, answer, correlation)

    def _issue(
        self, csr: x509.CertificateSigningRequest, device_id: str, server_names: list[str]
    ) -> tuple[x509.Certificate, x509.Certificate, str | None]:
        """Sign a device certificate for ``[enrollment] device_cert_days`` (CA's end at most),
        and, when the device names its API's addresses, a server certificate for the same key
        (SANs: the device id and those names) that lasts as long."""
        ca_key, ca_cert = self.home.load_ca()
        not_after = dt.datetime.now(dt.UTC) + dt.timedelta(
            days=self.config.enrollment.device_cert_days
        )
        external = self.config.broker.mode == "external"
        reserved = enrollment.hub_names(
            self.config.hub.public_host, self.config.broker.host if external else None
        )
        enrollment.check_server_names(server_names, reserved)
        cert = ca.issue(ca_key, ca_cert, csr, device_id, not_after)
        server = None
        if server_names:
            names = list(dict.fromkeys([device_id, *server_names]))
            server_cert = ca.issue(ca_key, ca_cert, csr, device_id, not_after, names)
            server = ca.to_pem(server_cert).decode()
        return cert, ca_cert, server

    def _grant(self, raw: bytes) -> bytes:
        """Decide, issue and record an enrollment in one registry transaction (in a worker
        thread: several at once, see ``handle``); the answer to send."""
        request = enrollment.parse_request(raw, self.config.enrollment.max_request_bytes)
        device_id = None
        with contextlib.suppress(enrollment.Refusal):
            device_id, _, _ = enrollment.read_csr(request.csr)

        def grant(records: EnrollmentRecords) -> tuple[Enrolled, tuple[dict[str, Any], bytes]]:
            claim, existing, held = records
            known_key = held.key_sha256 if held and held.device_id == device_id else None
            decided = enrollment.decide(request, claim, existing, time.time(), known_key)
            cert, ca_cert, server = self._issue(
                decided.csr, decided.device_id, request.server_names
            )
            enrolled = Enrolled(
                decided.device_id, decided.claim.id, decided.claim.labels, decided.facts,
                cert.serial_number, enrollment.csr_key_sha256(decided.csr),
                identity.cert_not_after(cert),
            )
            said = {"device": decided.device_id, "claim": decided.claim.id,
                    "again": decided.reenrollment}
            # No ACL update: device rules are patterns on the certificate's CN.
            return enrolled, (said, json.dumps(
                {
                    "status": "accepted",
                    "device_id": decided.device_id,
                    "certificate": ca.to_pem(cert).decode(),
                    "ca_certificate": ca.to_pem(ca_cert).decode(),
                    "labels": decided.claim.labels,
                    "server_certificate": server,
                }
            ).encode())

        said, answer = self.registry.enroll(request.claim_id, device_id, grant)
        log.info("device enrolled", extra=said)
        return answer

    async def _renew(
        self, client: aiomqtt.Client, message: aiomqtt.Message, device_id: str, raw: bytes
    ) -> None:
        """Answer a renewal on the device's own response topic, never anywhere else."""
        response_topic, correlation = self._response_route(message)
        if response_topic != topics.renew_response(device_id):
            log.warning(
                "renewal request without its own response topic; dropped",
                extra={"device": device_id, "response_topic": response_topic},
            )
            return
        try:
            answer = self._renewal(device_id, raw)
        except enrollment.Refusal as refusal:
            log.warning(
                "renewal refused",
                extra={"device": device_id, "code": refusal.code, "reason": refusal.reason},
            )
            answer = enrollment.refusal_payload(refusal)
        await self._answer(client, response_topic, answer, correlation)

    def _renewal(self, device_id: str, raw: bytes) -> bytes:
        request = enrollment.parse_renewal(raw, self.config.enrollment.max_request_bytes)
        _, ca_cert = self.home.load_ca()
        held = None
        with contextlib.suppress(IdentityError):
            held = self.registry.device_cert(
                identity.load_cert(request.certificate.encode()).serial_number
            )
        grant = enrollment.decide_renewal(
            device_id, request, ca_cert, self.registry.device(device_id), held, time.time()
        )
        cert, ca_cert, server = self._issue(grant.csr, grant.device_id, request.server_names)
        self.registry.add_cert(
            grant.device_id, cert.serial_number, grant.key_sha256, identity.cert_not_after(cert)
        )
        log.info(
            "device certificate renewed",
            extra={"device": device_id, "not_after": identity.cert_not_after(cert)},
        )
        return RenewAccepted(
            device_id=device_id,
            certificate=ca.to_pem(cert).decode(),
            ca_certificate=ca.to_pem(ca_cert).decode(),
            server_certificate=server,
        ).model_dump_json().encode()

    def _retire_replaced(self, device_id: str, state: dict[str, Any]) -> None:
        """A device reporting its current certificate in use has proven it: retire the rest."""
        cert = state.get("certificate")
        serial = cert.get("serial") if isinstance(cert, dict) else None
        device = self.registry.device(device_id)
        if device is None or not isinstance(serial, str) or serial != str(device.cert_serial):
            return
        if self.registry.retire_other_certs(device_id, device.cert_serial):
            broker.write_access(self.home, self.registry)
            log.info("replaced certificates retired", extra={"device": device_id})
