"""``appliance.mqtt.Session``, the reconnect loop the device's hub link and the hub share, against
the hub's real mosquitto (TLS, ACL): one rule per test."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import aiomqtt
import pytest

from appliance import mqtt
from appliance.errors import LinkError
from tests.support.fleet import Hub
from tests.support.wait import eventually


class Refused(Exception):
    """An error of the test's own, not in ``retry_on``."""


def connect(hub: Hub, name: str) -> Callable[[], aiomqtt.Client]:
    """A client with the hub's own certificate (its ACL allows ``spoke/#`` only)."""
    tls = mqtt.tls_context(hub.home / "ca" / "ca.crt", hub.home / "hub" / "hub.crt",
                           hub.home / "hub" / "hub.key")
    return lambda: mqtt.client("localhost", hub.mqtt_port, name, tls, timeout=5)


async def read_until_lost(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass


async def test_an_error_it_may_not_retry_ends_run(hub: Hub) -> None:
    session = mqtt.Session(connect(hub, "session-fatal"), ["spoke/v1/+/state"],
                           mqtt.Backoff(0.1, 0.2), retry_on=(aiomqtt.MqttError,))
    downs: list[Exception] = []

    async def serve(client: aiomqtt.Client) -> None:
        raise Refused("not for retrying")

    with pytest.raises(Refused, match="not for retrying"):
        await asyncio.wait_for(session.run(serve, lambda e, d: downs.append(e)), 30)
    assert downs == []
    assert not session.connected.is_set() and session.client is None


async def test_an_error_in_retry_on_is_reported_then_retried_after_a_fresh_backoff(
        hub: Hub) -> None:
    """Each session got its subscriptions granted, so each retry waits the first delay again."""
    session = mqtt.Session(connect(hub, "session-retry"), ["spoke/v1/+/state"],
                           mqtt.Backoff(0.05, 5.0), retry_on=(aiomqtt.MqttError, LinkError))
    attempts = iter([True, True, True, False])
    downs: list[tuple[Exception, float]] = []

    async def serve(client: aiomqtt.Client) -> None:
        assert session.connected.is_set() and session.client is client
        raise LinkError("publish failed")

    await asyncio.wait_for(
        session.run(serve, lambda e, d: downs.append((e, d)), may_connect=lambda: next(attempts)),
        30)
    assert [str(e) for e, _ in downs] == ["publish failed"] * 3
    assert all(0.025 <= delay <= 0.05 for _, delay in downs)


async def test_a_lost_broker_is_reported_and_the_session_comes_back(hub: Hub) -> None:
    session = mqtt.Session(connect(hub, "session-lost"), ["spoke/v1/+/state"],
                           mqtt.Backoff(0.2, 1.0), retry_on=(aiomqtt.MqttError,))
    served: list[aiomqtt.Client] = []
    downs: list[Exception] = []

    async def serve(client: aiomqtt.Client) -> None:
        served.append(client)
        await read_until_lost(client)

    runner = asyncio.create_task(session.run(serve, lambda e, d: downs.append(e)))
    try:
        async def up(times: int) -> bool:
            return len(served) == times and session.connected.is_set()

        await eventually(lambda: up(1), 30, "the first session")
        os.kill(hub.broker_pid(), signal.SIGKILL)  # the hub starts a new mosquitto
        await eventually(lambda: up(2), 60, "the session after the broker's restart")
        assert downs and all(isinstance(e, aiomqtt.MqttError) for e in downs)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert not session.connected.is_set()


async def test_run_returns_without_connecting_when_it_may_not() -> None:
    def never() -> aiomqtt.Client:
        raise AssertionError("connected although may_connect said no")

    session = mqtt.Session(never, [], mqtt.Backoff(0.1, 0.2), retry_on=(aiomqtt.MqttError,))
    await asyncio.wait_for(session.run(read_until_lost, lambda e, d: None,
                                       may_connect=lambda: False), 5)
    assert session.client is None
