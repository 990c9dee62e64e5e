"""MQTT plumbing both sides share: TLS contexts, MQTT 5 clients, subscribing with the broker's
answer checked, publishing with its errors converted (``LinkError``), and reconnect backoff."""

import random
import ssl
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.errors import LinkError

# MQTT 5 reason codes at or above this are failures (e.g. 0x87 "not authorized").
FAILURE_REASON = 0x80


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Mutual TLS: we verify the broker against the hub CA and present our own certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client(
    host: str,
    port: int,
    identifier: str,
    tls: ssl.SSLContext,
    will: aiomqtt.Will | None = None,
    keepalive: int = 30,
    timeout: float = 10.0,
    session_expiry_s: int = 0,
    resume: bool = False,
) -> aiomqtt.Client:
    """``session_expiry_s`` > 0: a persistent session (resumed, not cleaned, on reconnect), so
    the broker keeps QoS 1 messages for this client while it is away. ``resume`` with no
    expiry: take over the session this id left, with what waits in it, and end it on
    disconnect."""
    properties = None
    if session_expiry_s:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
    return aiomqtt.Client(
        hostname=host,
        port=port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls,
        will=will,
        keepalive=keepalive,
        timeout=timeout,
        clean_start=not (session_expiry_s or resume),
        properties=properties,
    )


def publish_properties(
    response_topic: str | None = None, correlation: bytes | None = None
) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def granted(result: object) -> bool:
    """True if every reason code a SUBACK carried is a success."""
    codes = result if isinstance(result, list | tuple) else [result]
    return all(int(getattr(c, "value", c)) < FAILURE_REASON for c in codes)  # type: ignore[call-overload]


async def subscribe(client: aiomqtt.Client, topic: str, refused: str,
                    error: type[Exception] = LinkError) -> None:
    """Subscribe at QoS 1; raise ``error(refused)`` when the broker's SUBACK refuses it (a
    revoked certificate, an ACL that does not allow it)."""
    if not granted(await client.subscribe(topic, qos=1)):
        raise error(refused)


async def publish(client: aiomqtt.Client | None, topic: str, payload: bytes | str, *,
                  retain: bool = False, down: str, timeout: float = 10.0) -> None:
    """Publish at QoS 1 on a live session, or raise ``LinkError``: ``down`` when there is no
    session (``client`` None), the broker's error converted otherwise."""
    if client is None:
        raise LinkError(down)
    try:
        await client.publish(topic, payload, qos=1, retain=retain, timeout=timeout)
    except aiomqtt.MqttError as exc:
        raise LinkError(f"publish to {topic} failed: {exc}") from exc


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog), capped."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
