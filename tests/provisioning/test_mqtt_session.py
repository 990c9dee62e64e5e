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
    """A refusal type of the test's own, to see that ``refusal`` is what ``run`` raises."""


def connect(hub: Hub, name: str) -> Callable[[], aiomqtt.Client]:
    """A client with the hub's own certificate (its ACL allows ``spoke/#`` only)."""
    tls = mqtt.tls_context(hub.home / "ca" / "ca.crt", hub.home / "hub" / "hub.crt",
                           hub.home / "hub" / "hub.key")
    return lambda: mqtt.client("localhost", hub.mqtt_port, name, tls, timeout=5)


async def read_until_lost(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass


async def test_a_refused_subscription_ends_run_with_the_refusal_error(hub: Hub) -> None:
    session = mqtt.Session(connect(hub, "session-refused"), ["spoke/v1/#", "elsewhere/#"],
                           mqtt.Backoff(0.1, 0.2), retry_on=(aiomqtt.MqttError,),
                           refused="no {topic} for us", refusal=Refused)
    downs: list[Exception] = []
    with pytest.raises(Refused, match="no elsewhere/# for us"):
        await asyncio.wait_for(session.run(read_until_lost, lambda e, d: downs.append(e)), 30)
    assert downs == []
    assert not session.connected.is_set() and session.client is None


async def test_a_refusal_listed_in_retry_on_is_retried_with_backoff(hub: Hub) -> None:
    session = mqtt.Session(connect(hub, "session-retry"), ["elsewhere/#"],
                           mqtt.Backoff(0.05, 0.1), retry_on=(aiomqtt.MqttError, LinkError))
    attempts = iter([True, True, False])
    downs: list[tuple[Exception, float]] = []
    await asyncio.wait_for(
        session.run(read_until_lost, lambda e, d: downs.append((e, d)),
                    may_connect=lambda: next(attempts)), 30)
    assert [type(e) for e, _ in downs] == [LinkError, LinkError]
    assert all(0 < delay <= 0.1 for _, delay in downs)
    assert "elsewhere/#" in str(downs[0][0])


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
        assert session.backoff.attempt == 0  # reset once the subscriptions were granted again
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
