"""A broker reload does not cost a reconnecting hub process its share (docs/SCALE.md).

mosquitto 2.0, told to re-read its ACL and CRL (SIGHUP, after a revocation or a new bundle),
disconnects every *disconnected* persistent session once more before it re-applies the ACL
file's ``user`` blocks, so such a session keeps none, and the broker then silently drops what
it routes to that session (mosquitto_security_apply_default; upstream issue 2934). A hub
process is such a session while it reconnects. Pattern rules are not held per session, so the
hub reads the fleet's traffic through one (broker.render_acl). This test has one of two hub
sessions away while the real broker reloads and checks that its share waits for it."""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiomqtt
import pytest

from appliance import mqtt
from provisioning.hub import SHARE, client_id, hub_tls
from tests.support.hubfleet import HubFleet
from tests.support.wait import eventually

HEALTH = f"{SHARE}/spoke/v1/+/health"
REPORTS = 40


async def member(fleet: HubFleet, name: str, got: list[float], stop: asyncio.Event,
                 subscribed: asyncio.Event | None) -> None:
    """A hub process's persistent session: subscribes (then sets ``subscribed``) or, without
    it, resumes; keeps the taken-at time of each report it is sent until ``stop``."""
    tls = hub_tls(fleet.home, fleet.home.load_config())
    client = mqtt.client("127.0.0.1", fleet.hub.mqtt_port, client_id(name), tls,
                         timeout=60, session_expiry_s=3600)
    async with client:
        if subscribed is not None:
            await client.subscribe(HEALTH, qos=1)
            subscribed.set()

        async def take() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(json.loads(message.payload)["taken_at_s"])

        reading = asyncio.create_task(take())
        await stop.wait()
        reading.cancel()


def test_a_hub_session_away_during_a_broker_reload_keeps_its_share(tmp_path: Path) -> None:
    fleet = HubFleet(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    log = fleet.broker.output
    try:
        device = fleet.enrolled_devices(1)[0]
        away: list[float] = []
        staying: list[float] = []

        async def logged(line: str) -> bool:
            return line in log()

        async def delivered() -> bool:
            return len(away) + len(staying) >= REPORTS

        async def run() -> None:
            gone, stop, back = asyncio.Event(), asyncio.Event(), asyncio.Event()
            a_in, b_in = asyncio.Event(), asyncio.Event()
            first = asyncio.create_task(member(fleet, "a", away, gone, a_in))
            other = asyncio.create_task(member(fleet, "b", staying, stop, b_in))
            await asyncio.wait_for(asyncio.gather(a_in.wait(), b_in.wait()), 60)
            gone.set()  # hub process "a" is away, its session kept: as while it reconnects
            await first
            left = f"Client {client_id('a')} disconnected."
            await eventually(lambda: logged(left), 60, "the broker to see hub session a leave")
            os.kill(fleet.broker.proc.pid, signal.SIGHUP)  # what broker.write_access does
            await eventually(lambda: logged("Reloading config."), 60, "the broker to reload")
            await device.report({"taken_at_s": 0.0}, 0.02, time.time() + 120, count=REPORTS)
            again = asyncio.create_task(member(fleet, "a", away, back, None))
            await eventually(
                delivered, 60,
                lambda: f"every report delivered: {len(away) + len(staying)} of {REPORTS}",
            )
            back.set()
            stop.set()
            await asyncio.gather(again, other)

        asyncio.run(run())
        assert sorted(away + staying) == sorted(device.acked)
        assert away, "the session that was away got none of its share: the test proved nothing"
    except aiomqtt.MqttError as exc:
        pytest.fail(f"the broker refused a client: {exc}")
    finally:
        fleet.close()
