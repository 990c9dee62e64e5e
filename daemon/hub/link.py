"""The device's MQTT session with the hub: presence, reported state, reconnects, renewal.

It connects with the device certificate, sets a retained last will ``offline``, then publishes
``online`` and its state (both retained). When the broker or hub goes away it reconnects with
exponential backoff and full jitter, capped by config. It renews its certificate over the
session (daemon/hub/renewal.py) and reconnects with the new one; a certificate that expired
anyway hands the device back to provisioning (``on_expired``).
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt

from appliance import __version__, identity, mqtt, topics
from appliance.config import HubLinkSection
from appliance.errors import EnrollmentRefused, IdentityError, LinkError
from appliance.payloads import AVAILABLE_OFFLINE, AVAILABLE_ONLINE, AVAILABLE_STOPPED
from appliance.service import TaskGroupService
from daemon.hub import renewal
from daemon.state import Identity, StateDir, StatusFile

log = logging.getLogger(__name__)

MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]


class HubLink(TaskGroupService):
    name = "hublink"

    def __init__(
        self,
        ident: Identity,
        config: HubLinkSection,
        status: StatusFile,
        state_fields: Callable[[], dict[str, Any]],
        state: StateDir,
        *,
        handlers: dict[str, MessageHandler] | None = None,
        on_renewed: Sequence[Callable[[renewal.Renewed], object]] = (),
        on_expired: Callable[[], None] | None = None,
        server_names: Callable[[], list[str]] = list,
    ) -> None:
        """``handlers``: the device's topics (MQTT patterns) and who handles each;
        ``on_renewed``: called with each proven renewal, after the swap and before the
        reconnect; ``on_expired``: called once if the certificate has expired (only
        re-enrollment can help then); ``server_names``: the names for the API's server
        certificate, renewed with the device certificate."""
        super().__init__()
        self.ident = ident
        self.config = config
        self.status = status
        self.state_fields = state_fields
        self.state = state
        self.started = time.time()
        device = ident.device_id
        self.address = f"{ident.hub_host}:{ident.mqtt_port}"
        self.session = mqtt.Session(
            self._connect,
            (topics.desired(device), f"{topics.ROOT}/{device}/cmd/+", topics.events_ack(device)),
            mqtt.Backoff(config.backoff_initial_s, config.backoff_cap_s),
            retry_on=(aiomqtt.MqttError, LinkError),
            refused="the broker refused subscription to {topic} (revoked?)",
        )
        self.on_renewed = tuple(on_renewed)
        self.on_expired = on_expired
        self.server_names = server_names
        self._reconnect = asyncio.Event()
        self._exchange = renewal.Exchange()
        self.handlers: dict[str, MessageHandler] = {
            topics.renew_response(ident.device_id): self._exchange.on_message, **(handlers or {})}
        self._seq = 0

    @property
    def connected(self) -> asyncio.Event:
        """Set while the session is up (its subscriptions granted)."""
        return self.session.connected

    async def start(self) -> None:
        self.status.set("certificate", self.ident.cert_summary())
        self.spawn(self._run(), "session")
        self.spawn(self._renew_when_due(), "renewal")

    async def stop(self) -> None:
        """Say ``stopped`` (so the hub knows this was on purpose), then disconnect."""
        if self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(self._publish_available(AVAILABLE_STOPPED), 3)
        await self.cancel_tasks()

    def reported_state(self) -> dict[str, Any]:
        return {
            "device_id": self.ident.device_id,
            "software_version": __version__,
            "provisioning": "enrolled",
            "labels": self.ident.labels,
            "started_at": self.started,
            "certificate": self.ident.cert_summary(),
        } | self.state_fields()

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish now, or raise LinkError while the hub is unreachable (callers queue)."""
        await self.session.publish(topic, payload, retain=retain, down="not connected to the hub")

    async def publish_state(self) -> None:
        """Publish the state with a sequence number that only grows (wall-clock nanoseconds,
        bumped past the last one), so the hub never lets an older state replace a newer."""
        self._seq = max(self._seq + 1, time.time_ns())
        state = self.reported_state() | {"seq": self._seq}
        await self.publish(topics.state(self.ident.device_id), json.dumps(state), retain=True)

    async def _publish_available(self, value: bytes) -> None:
        await self.publish(topics.available(self.ident.device_id), value, retain=True)

    def _connect(self) -> aiomqtt.Client:
        ident = self.ident
        will = aiomqtt.Will(
            topics.available(ident.device_id), AVAILABLE_OFFLINE, qos=1, retain=True
        )
        # Built each time: a renewal swaps the files underneath between two sessions.
        tls = mqtt.tls_context(ident.ca, ident.cert, ident.key)
        return mqtt.client(ident.hub_host, ident.mqtt_port, ident.device_id, tls, will=will,
                           timeout=self.config.connect_timeout_s)

    async def _run(self) -> None:
        await self.session.run(self._session, self._down,
                               may_connect=lambda: not self.ident.expired())
        self._expired()  # the session gives up only on an expired certificate

    def _down(self, exc: Exception, delay: float) -> None:
        self.status.hub(False, self.address, error=str(exc))
        log.warning("hub link down", extra={"error": str(exc), "retry_s": round(delay, 2)})

    async def _session(self, client: aiomqtt.Client) -> None:
        device = self.ident.device_id
        await self._publish_available(AVAILABLE_ONLINE)
        await self.publish_state()
        self.status.hub(True, self.address)
        log.info("hub link up", extra={"hub": self.address, "device": device})
        self._reconnect.clear()
        reader = asyncio.create_task(self._read(client))
        renewed = asyncio.create_task(self._reconnect.wait())
        try:
            await asyncio.wait({reader, renewed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, renewed):
                task.cancel()
        if reader.done() and not reader.cancelled():
            reader.result()  # the session's error, if it ended with one
        if self._reconnect.is_set():
            self.connected.clear()
            log.info("reconnecting with the renewed certificate", extra={"device": device})

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._dispatch(message)

    def _expired(self) -> None:
        self.connected.clear()
        summary = self.ident.cert_summary()
        self.status.set("certificate", summary)
        self.status.hub(False, error="the device certificate has expired")
        log.error("device certificate expired", extra={"not_after": summary["not_after"]})
        if self.on_expired is not None:
            self.on_expired()

    async def _renew_when_due(self) -> None:
        """Sleep until the renewal point, renew over the live session, then reconnect."""
        while True:
            due = identity.renewal_due_at(self.ident.certificate(), self.config.renew_at_share)
            await asyncio.sleep(max(0.0, due - time.time()))
            await self.connected.wait()
            client = self.session.client
            if client is None:
                continue
            try:
                renewed = await renewal.renew(
                    client,
                    self._exchange,
                    self.state,
                    self.ident,
                    self.config.renew_new_key,
                    self.config.enroll_timeout_s,
                    self.server_names(),
                )
            except (LinkError, EnrollmentRefused, IdentityError) as exc:
                self.status.set("renewal", {"error": str(exc), "at": time.time()})
                log.warning(
                    "certificate renewal failed; will retry",
                    extra={"error": str(exc), "retry_s": self.config.renew_retry_s},
                )
                await asyncio.sleep(self.config.renew_retry_s)
                continue
            self.status.set("certificate", self.ident.cert_summary())
            self.status.set("renewal", {"error": None, "at": time.time()})
            for callback in self.on_renewed:
                callback(renewed)
            self._reconnect.set()

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        for pattern, handler in self.handlers.items():
            if message.topic.matches(pattern):
                try:
                    await handler(message)
                except Exception:
                    log.exception("message handler failed", extra={"topic": str(message.topic)})
                return
