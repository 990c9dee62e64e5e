"""Several hub processes on one fleet, for tests and benchmarks: one hub home whose registry is
a PostgreSQL database, a real mosquitto started from the hub's own config (the hubs use it as
an external broker), and ``spoke-hub serve`` processes started at will."""

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from appliance import identity, mqtt, topics
from provisioning import broker, ca
from provisioning.home import HubHome
from provisioning.registry import open_registry
from tests.support.fleet import Hub, Process, free_port, wait_for

#: What a hub process logs when it takes the singleton work over.
LEADS = "this hub process now runs the singleton work"


def tail(process: Process, lines: int = 25) -> str:
    """The end of a process's log, for a failure message."""
    return "\n".join(process.output().splitlines()[-lines:])


class HubFleet:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.hub = Hub(root)
        self.home = HubHome(self.hub.home)
        with self.home.config.open("a") as f:
            f.write(f'\n[registry]\nurl = "{url}"\n')
        config = self.home.load_config()
        self.home.broker_dir.mkdir(parents=True, exist_ok=True)
        self.home.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.home.broker_dir / "mosquitto.conf"
        conf.write_text(broker.render_config(self.home, config))
        registry = open_registry(self.home)
        (self.home.broker_dir / "acl").write_text(broker.render_acl(registry))
        registry.close()
        self.broker = Process(
            [broker.find_mosquitto("mosquitto"), "-c", str(conf)], root / "mosquitto.log"
        )
        # The singleton's ACL/CRL updates signal the broker through this file.
        (self.home.run_dir / "mosquitto.pid").write_text(str(self.broker.proc.pid))
        self.hubs: list[Process] = []
        wait_for(self._broker_listens, 60,
                 lambda: f"mosquitto to listen; its log ends:\n{tail(self.broker)}")

    def _broker_listens(self) -> bool:
        assert self.broker.running(), f"mosquitto exited; its log ends:\n{tail(self.broker)}"
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.hub.mqtt_port), timeout=1).close()
            return True
        return False

    def start_hub(self, name: str) -> Process:
        env = {"SPOKE_HUB_HUB__HTTP_PORT": str(free_port()), "SPOKE_HUB_HUB__INSTANCE": name}
        argv = [sys.executable, "-m", "provisioning", "serve", "--home", str(self.home.root),
                "--broker", "external", "--broker-host", "127.0.0.1"]
        process = Process(argv, self.root / f"{name}.log", env=env)
        self.hubs.append(process)

        def connected() -> bool:
            assert process.running(), f"{name} exited; its log ends:\n{tail(process)}"
            return "hub connected to broker" in process.output()

        wait_for(connected, 120, lambda: f"{name} to connect; its log ends:\n{tail(process)}\n"
                 f"mosquitto's log ends:\n{tail(self.broker)}")
        return process

    def enrolled_devices(self, count: int) -> list["FakeDevice"]:
        """Devices in the registry with certificates from the hub's CA, without the enrollment
        round trip (a test of ingest need not wait for ``count`` enrollments)."""
        ca_key, ca_cert = self.home.load_ca()
        folder = self.root / "devices"
        folder.mkdir(exist_ok=True)
        first = len(list(folder.glob("*.crt")))
        registry = open_registry(self.home)
        devices = []
        try:
            claim = f"load-{time.time_ns()}"
            registry.add_claim(claim, ca.new_secret(), {}, time.time() + 3600, count, 1)
            for i in range(first, first + count):
                key = identity.generate_key()
                device_id = identity.device_id_for(key.public_key())
                not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
                cert = ca.issue(ca_key, ca_cert, key, device_id, not_after)
                registry.add_device(device_id, claim, {}, {}, cert.serial_number)
                (folder / f"{i}.crt").write_bytes(ca.to_pem(cert))
                (folder / f"{i}.key").write_bytes(identity.key_to_pem(key))
                devices.append(FakeDevice(
                    device_id, "localhost", self.hub.mqtt_port, self.home.ca_cert,
                    folder / f"{i}.crt", folder / f"{i}.key",
                ))
        finally:
            registry.close()
        return devices

    def close(self) -> None:
        for p in self.hubs:
            p.kill()
        self.broker.kill()


#: How often a simulated device's client does paho's housekeeping (keepalive pings; the
#: keepalive is 30 s). aiomqtt does it every second per client: with thousands of simulated
#: devices in one process those wakeups cost more CPU than the reports.
HOUSEKEEPING_S = 10.0


class QuietClient(aiomqtt.Client):
    """An aiomqtt client whose housekeeping runs every HOUSEKEEPING_S, not every second."""

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(HOUSEKEEPING_S)


def report_bodies(snapshot: dict[str, Any]) -> Callable[[float], str]:
    """The JSON of ``snapshot`` taken at a given time, serialized once: only the time is
    formatted per report (a 3 KB ``json.dumps`` per report was most of the simulator's work)."""
    rest = json.dumps({k: v for k, v in snapshot.items() if k != "taken_at_s"})
    head = '{"taken_at_s": '
    tail = ("}" if rest == "{}" else ", " + rest[1:])
    return lambda taken: head + repr(taken) + tail


class FakeDevice:
    """Publishes health reports over mTLS with its own certificate, as a device does, and
    remembers the taken-at time of each report the broker acknowledged."""

    def __init__(
        self, device_id: str, host: str, port: int, ca_cert: Path, cert: Path, key: Path
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.ca_cert = ca_cert
        self.cert = cert
        self.key = key
        self.acked: list[float] = []
        self.reconnects = 0
        self._tls: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        """The device's TLS context, loaded on first use and kept: loading 10,000 of them
        when every device starts at once blocked the simulator's loop past a whole run."""
        if self._tls is None:
            self._tls = mqtt.tls_context(self.ca_cert, self.cert, self.key)
        return self._tls

    async def report(
        self, snapshot: dict[str, Any], interval: float, until: float, offset: float = 0.0,
        count: int | None = None,
    ) -> None:
        """Every ``interval`` s from ``offset`` s on until ``until`` (or ``count`` reports, if
        sooner). A lost connection is counted and made again; a report it took unacknowledged
        is not counted sent."""
        body = report_bodies(snapshot)
        await asyncio.sleep(offset)
        tls = self.tls()
        sent = 0
        while time.time() < until and (count is None or sent < count):
            try:
                async with mqtt.client(
                    self.host, self.port, self.device_id, tls, timeout=60, kind=QuietClient
                ) as client:
                    while time.time() < until and (count is None or sent < count):
                        sent += 1
                        taken = time.time()
                        await client.publish(
                            topics.health(self.device_id), body(taken), qos=1, timeout=60
                        )
                        self.acked.append(taken)
                        await asyncio.sleep(interval)
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(1)
