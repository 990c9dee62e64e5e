"""MQTT plumbing both sides share: TLS contexts, MQTT 5 clients, subscribing with the broker's
answer checked, publishing with its errors converted (``LinkError``), reconnect backoff, and
``Session``: the one reconnect loop of the device's hub link and of the hub."""

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.errors import LinkError

# MQTT 5 reason codes at or above this are failures (e.g. 0x87 "not authorized").
FAILURE_REASON = 0x80
#: paho's ``Properties`` has no annotations: typed once here, so this module passes --strict.
new_properties: Callable[[int], Properties] = Properties


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
    kind: type[aiomqtt.Client] = aiomqtt.Client,
) -> aiomqtt.Client:
    """``session_expiry_s`` > 0: a persistent session (resumed, not cleaned, on reconnect), so
    the broker keeps QoS 1 messages for this client while it is away. ``resume`` with no
    expiry: take over the session this id left, with what waits in it, and end it on
    disconnect. ``kind``: a subclass of aiomqtt.Client (the fleet simulator's)."""
    properties = None
    if session_expiry_s:
        properties = new_properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
    return kind(
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
    props = new_properties(PacketTypes.PUBLISH)
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


class Session:
    """One MQTT session kept up: connect, subscribe (every SUBACK checked), serve, and when the
    link fails, wait with backoff and connect again, as aiomqtt's docs advise. The device's
    ``HubLink`` and the hub's ``HubService`` both run on it.

    ``retry_on``: the errors that mean "the link is down, try again"; any other error ends
    ``run`` (the hub treats a refused subscription, ``refusal``, as fatal; the device retries
    it, since a revoked device may be reinstated). ``refused`` names the topic in that error.
    """

    def __init__(self, connect: Callable[[], aiomqtt.Client], subscriptions: Sequence[str],
                 backoff: Backoff, *, retry_on: tuple[type[Exception], ...],
                 refused: str = "the broker refused the subscription to {topic}",
                 refusal: type[Exception] = LinkError) -> None:
        self._connect = connect
        self.subscriptions = tuple(subscriptions)
        self.backoff = backoff
        self.retry_on = retry_on
        self.refused = refused
        self.refusal = refusal
        #: The live client while connected (renewal and acks need it), else None.
        self.client: aiomqtt.Client | None = None
        #: Set once the subscriptions are granted, cleared as soon as the session ends.
        self.connected = asyncio.Event()

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                      down: str) -> None:
        """``publish`` on this session: ``LinkError(down)`` while it is not connected."""
        client = self.client if self.connected.is_set() else None
        await publish(client, topic, payload, retain=retain, down=down)

    async def run(self, serve: Callable[[aiomqtt.Client], Awaitable[None]],
                  on_down: Callable[[Exception, float], None],
                  may_connect: Callable[[], bool] = lambda: True) -> None:
        """Connect and ``serve(client)`` until cancelled; a serve that returns reconnects at
        once, a ``retry_on`` error calls ``on_down(error, delay)`` and sleeps ``delay`` first.
        Returns when ``may_connect()`` says no (checked before each connection)."""
        while may_connect():
            try:
                await self._once(serve)
            except self.retry_on as exc:
                delay = self.backoff.next_delay()
                on_down(exc, delay)
                await asyncio.sleep(delay)

    async def _once(self, serve: Callable[[aiomqtt.Client], Awaitable[None]]) -> None:
        try:
            async with self._connect() as client:
                self.client = client
                for topic in self.subscriptions:
                    await subscribe(client, topic, self.refused.format(topic=topic),
                                    self.refusal)
                self.backoff.reset()
                self.connected.set()
                await serve(client)
        finally:
            self.connected.clear()
            self.client = None
