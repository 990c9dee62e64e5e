"""The hub service: answers enrollments and keeps the registry's view of the fleet current."""

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from typing import Any

import aiomqtt

from appliance import mqtt, topics
from appliance.config import HubConfig
from appliance.errors import LinkError
from appliance.health import HealthSnapshot
from appliance.payloads import AVAILABLE_OFFLINE, AVAILABLE_ONLINE, AVAILABLE_STOPPED, Event
from appliance.service import TaskGroupService
from provisioning import ca, enrollment
from provisioning.home import HubHome
from provisioning.registry import Registry

log = logging.getLogger(__name__)

AVAILABILITY = {
    AVAILABLE_ONLINE: "online",
    AVAILABLE_STOPPED: "stopped",
    AVAILABLE_OFFLINE: "offline",
}
MAX_DEVICE_MESSAGE_BYTES = 256 * 1024


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
    return mqtt.tls_context(home.ca_cert, home.hub_cert, home.hub_key)


class HubService(TaskGroupService):
    """One MQTT session for the hub, re-established with backoff when the broker goes away."""

    name = "hub"

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        super().__init__()
        self.home = home
        self.config = config
        self.registry = registry
        self.connected = asyncio.Event()
        self.enrollments = 0
        #: Counts broker sessions, so a publisher of retained state knows to send it again.
        self.sessions = 0
        self._client: aiomqtt.Client | None = None

    async def start(self) -> None:
        self.spawn(self._run(), "mqtt")

    async def stop(self) -> None:
        await self.cancel_tasks()

    async def _run(self) -> None:
        host, port = broker_address(self.config)
        backoff = mqtt.Backoff(0.5, 10.0)
        while True:
            try:
                async with mqtt.client(
                    host, port, f"hub-{uuid.uuid4().hex[:8]}", hub_tls(self.home, self.config)
                ) as client:
                    await self._subscribe(client)
                    backoff.reset()
                    self._client = client
                    self.sessions += 1
                    self.connected.set()
                    log.info("hub connected to broker", extra={"host": host, "port": port})
                    async for message in client.messages:
                        await self._dispatch(client, message)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = backoff.next_delay()
                log.warning("broker connection lost", extra={"error": str(exc), "retry_s": delay})
                await asyncio.sleep(delay)

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish on the hub's session, or raise LinkError while the broker is unreachable."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise LinkError("the hub is not connected to the broker")
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            raise LinkError(f"publish to {topic} failed: {exc}") from exc

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for topic in (
            topics.ENROLL_REQUEST,
            topics.ALL_AVAILABLE,
            topics.ALL_STATE,
            topics.ALL_HEALTH,
            topics.ALL_EVENTS,
        ):
            if not mqtt.granted(await client.subscribe(topic, qos=1)):
                raise LinkError(f"the broker refused the hub's subscription to {topic}")

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            if topic == topics.ENROLL_REQUEST:
                await self._enroll(client, message, payload)
                return
            device_id = topics.device_of(topic)
            device = self.registry.device(device_id) if device_id else None
            if device is None or device.revoked_at is not None:
                return
            if message.topic.matches(topics.ALL_AVAILABLE):
                self.registry.set_availability(device.id, AVAILABILITY.get(payload, "unknown"))
            elif len(payload) > MAX_DEVICE_MESSAGE_BYTES:
                log.warning("dropped an oversized message", extra={"topic": topic})
            elif message.topic.matches(topics.ALL_STATE) and payload:
                self.registry.set_state(device.id, json.loads(payload))
            elif message.topic.matches(topics.ALL_HEALTH):
                snapshot = HealthSnapshot.model_validate_json(payload)
                self.registry.add_health(
                    device.id, snapshot.taken_at_s, snapshot.model_dump(mode="json")
                )
            elif message.topic.matches(topics.ALL_EVENTS):
                event = Event.model_validate_json(payload)
                self.registry.add_event(device.id, event.model_dump(mode="json"))
        except (ValueError, TypeError) as exc:
            log.warning("ignored a malformed message", extra={"topic": topic, "error": str(exc)})

    async def _enroll(self, client: aiomqtt.Client, message: aiomqtt.Message, raw: bytes) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        if not isinstance(response_topic, str) or not topics.is_enroll_response(response_topic):
            log.warning(
                "enrollment request without a valid response topic; dropped",
                extra={"response_topic": response_topic},
            )
            return
        try:
            answer = self._grant(raw)
        except enrollment.Refusal as refusal:
            log.warning(
                "enrollment refused", extra={"code": refusal.code, "reason": refusal.reason}
            )
            answer = enrollment.refusal_payload(refusal)
        await client.publish(
            response_topic,
            answer,
            qos=1,
            properties=mqtt.publish_properties(correlation=correlation),
        )

    def _grant(self, raw: bytes) -> bytes:
        request = enrollment.parse_request(raw, self.config.enrollment.max_request_bytes)
        claim = self.registry.claim(request.claim_id)
        device_id = None
        with contextlib.suppress(enrollment.Refusal):
            device_id, _, _ = enrollment.check_csr(request)
        existing = self.registry.device(device_id) if device_id else None
        grant = enrollment.decide(request, claim, existing, time.time())
        ca_key, ca_cert = self.home.load_ca()
        not_after = dt.datetime.now(dt.UTC) + dt.timedelta(
            days=self.config.enrollment.device_cert_days
        )
        cert = ca.issue(ca_key, ca_cert, grant.csr, grant.device_id, not_after)
        self.registry.add_device(
            grant.device_id, grant.claim.id, grant.claim.labels, grant.facts, cert.serial_number
        )
        # No broker update: device ACL rules are patterns on the certificate's CN.
        self.enrollments += 1
        log.info(
            "device enrolled",
            extra={"device": grant.device_id, "claim": grant.claim.id, "again": grant.reenrollment},
        )
        return json.dumps(
            {
                "status": "accepted",
                "device_id": grant.device_id,
                "certificate": ca.to_pem(cert).decode(),
                "ca_certificate": ca.to_pem(ca_cert).decode(),
                "labels": grant.claim.labels,
            }
        ).encode()
