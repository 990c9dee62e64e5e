"""Ending the MQTT session of a hub process that stopped, so its share of the fleet moves.

Each hub process keeps a persistent session, so what devices publish while it restarts waits
in the broker. But a broker keeps choosing a disconnected persistent member of a shared
subscription: mosquitto (and EMQX) queue its share of ``$share/spoke-hub/...`` traffic for it
until it returns. Singleton work therefore watches the named processes of the registry: when
one's instance lock is free, that process is gone; the singleton resumes its session under its
client id with no expiry, leaves the shared subscriptions, stores what was queued there
through the hub's own message handling, and disconnects, which ends the session. A process of
that name that starts meanwhile waits for the lock, then begins a fresh session.
"""

import asyncio
import logging
import time

import aiomqtt

from appliance import mqtt
from appliance.service import TaskGroupService
from provisioning import leader
from provisioning.hub import (
    SUBSCRIPTIONS,
    HubService,
    ack_when_handled,
    broker_address,
    client_id,
    hub_tls,
)

log = logging.getLogger(__name__)

#: A resumed session is drained once it has been this quiet.
QUIET_S = 2.0


class SessionSweeper(TaskGroupService):
    """Singleton work: ends the sessions of stopped hub processes, storing what waits in them."""

    name = "sessions"

    def __init__(self, hub: HubService, interval_s: float = 2.0) -> None:
        super().__init__()
        self.hub = hub
        self.interval_s = interval_s

    async def start(self) -> None:
        self.spawn(self._loop(), "sweep")

    async def stop(self) -> None:
        await self.cancel_tasks()

    async def _loop(self) -> None:
        while True:
            await self.sweep_stopped()
            await asyncio.sleep(self.interval_s)

    async def sweep_stopped(self) -> None:
        """End the session of every listed process that is gone."""
        own = self.hub.config.hub.instance
        for instance in await asyncio.to_thread(self.hub.registry.hub_processes):
            if instance != own:
                await self.sweep(instance)

    async def sweep(self, instance: str) -> None:
        """End ``instance``'s session if that process is gone; otherwise leave it be."""
        lock = leader.instance_lock(self.hub.registry.engine, instance)
        if not await asyncio.to_thread(lock.try_acquire):
            return
        try:
            started = time.monotonic()
            stored = await self.drain(instance)
            await asyncio.to_thread(self.hub.registry.remove_hub_process, instance)
            log.info(
                "ended the session of a stopped hub process",
                extra={"instance": instance, "messages": stored,
                       "took_s": round(time.monotonic() - started, 2)},
            )
        except aiomqtt.MqttError as exc:
            log.warning("could not end a stopped hub process's session; retrying",
                        extra={"instance": instance, "error": str(exc)})
        finally:
            await asyncio.to_thread(lock.release)

    async def drain(self, instance: str) -> int:
        host, port = broker_address(self.hub.config)
        tls = hub_tls(self.hub.home, self.hub.config)
        client = ack_when_handled(
            mqtt.client(host, port, client_id(instance), tls, resume=True)
        )
        async with client:
            # Out of the shared subscriptions at once: what arrives now is what the broker
            # queued for the dead process, and the session falls quiet even under load.
            await client.unsubscribe(list(SUBSCRIPTIONS))
            return await self.hub.consume(client, QUIET_S)
