"""A light simulated fleet, so that one small machine can hold 10,000 devices' connections
beside the hub it measures (scripts/bench_hubscale.py).

Each device is a bare MQTT 5 publisher on its own mTLS connection with its own certificate:
CONNECT, then QoS 1 PUBLISH and its PUBACK, nothing else (keepalive off, so no pings; no
paho client, no task per connection). The devices are split over a few worker processes,
and each process brings its connections up at a bounded rate: 10,000 TLS handshakes at
once starve everything else on the box (the aiomqtt simulator in one process got none of
its reports out within a run). The connections stay up across the bench's parts, as a real
fleet's do; one that drops is made again and counted.
"""

import asyncio
import contextlib
import multiprocessing
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from appliance import mqtt, topics
from tests.support.hubfleet import report_bodies

CONNACK, PUBLISH_QOS1, PUBACK = 0x20, 0x32, 0x40


class LiteError(Exception):
    """The broker refused, or the connection broke."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    # Protocol name, level 5, flags: clean start; keepalive 0 (off); no properties.
    body = utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0) + varint(0) + utf8(client_id)
    return bytes([0x10]) + varint(len(body)) + body


def publish_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    body = utf8(topic) + struct.pack("!H", packet_id) + varint(0) + payload
    return bytes([PUBLISH_QOS1]) + varint(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


@dataclass
class Spec:
    """What a worker needs to be one device (paths, so it pickles)."""

    device_id: str
    cert: Path
    key: Path


class LiteDevice:
    def __init__(self, spec: Spec, ca: Path) -> None:
        self.spec = spec
        self.ca = ca
        self.topic = topics.health(spec.device_id)
        self.reconnects = 0
        self.acked: list[float] = []
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._next_id = 0

    async def connect(self, host: str, port: int, timeout: float) -> None:
        tls = mqtt.tls_context(self.ca, self.spec.cert, self.spec.key)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host), timeout
        )
        writer.write(connect_packet(self.spec.device_id))
        kind, body = await asyncio.wait_for(read_packet(reader), timeout)
        if kind != CONNACK or len(body) < 2 or body[1] >= 0x80:
            writer.close()
            raise LiteError(f"{self.spec.device_id}: CONNACK {kind:#x} {body[:2].hex()}")
        self._streams = reader, writer

    async def publish(self, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""
        if self._streams is None:
            raise LiteError("not connected")
        reader, writer = self._streams
        self._next_id = self._next_id % 65535 + 1
        writer.write(publish_packet(self.topic, self._next_id, payload))
        kind, body = await asyncio.wait_for(read_packet(reader), timeout)
        if kind & 0xF0 != PUBACK or struct.unpack("!H", body[:2])[0] != self._next_id:
            raise LiteError(f"{self.spec.device_id}: expected PUBACK, got {kind:#x}")
        if len(body) > 2 and body[2] >= 0x80:
            raise LiteError(f"{self.spec.device_id}: publish refused, reason {body[2]:#x}")

    @property
    def connected(self) -> bool:
        return self._streams is not None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


@dataclass
class Part:
    """One reporting run: every device reports every ``interval`` s (spread evenly) from
    ``start`` (epoch s) until ``until``."""

    start: float
    interval: float
    until: float
    snapshot: dict[str, Any]


@dataclass
class Address:
    host: str
    port: int
    ca: Path
    connects_per_s: float
    timeout: float = 60.0


async def _bring_up(devices: list[LiteDevice], where: Address) -> int:
    """Connect every device at ``where.connects_per_s`` at most; returns how many failed
    (each retried once after a pause)."""
    failed = 0

    async def one(d: LiteDevice) -> None:
        nonlocal failed
        for attempt in range(2):
            try:
                await d.connect(where.host, where.port, where.timeout)
                return
            except (TimeoutError, OSError, LiteError, asyncio.IncompleteReadError):
                if attempt:
                    failed += 1
                await asyncio.sleep(5)

    started = time.monotonic()
    pending = []
    for i, d in enumerate(devices):
        delay = started + i / where.connects_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(one(d)))
    await asyncio.gather(*pending)
    return failed


async def _report(d: LiteDevice, part: Part, offset: float, where: Address) -> None:
    body = report_bodies(part.snapshot)
    await asyncio.sleep(max(0.0, part.start + offset - time.time()))
    while time.time() < part.until:
        taken = time.time()
        try:
            if not d.connected:
                await d.connect(where.host, where.port, where.timeout)
            await d.publish(body(taken).encode(), where.timeout)
            d.acked.append(taken)
        except (TimeoutError, OSError, LiteError, asyncio.IncompleteReadError):
            d.close()
            d.reconnects += 1
            await asyncio.sleep(1)
            continue
        await asyncio.sleep(max(0.0, taken + part.interval - time.time()))


def _worker(specs: list[Spec], where: Address, pipe: Connection, first: int, total: int) -> None:
    """A worker process: connect its devices, say how many failed, then run each Part the
    parent sends and answer with each device's acknowledged taken-at times."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        devices = [LiteDevice(s, where.ca) for s in specs]
        pipe.send(("up", await _bring_up(devices, where)))
        while True:
            part = await loop.run_in_executor(None, pipe.recv)
            if part is None:
                break
            for d in devices:
                d.acked, d.reconnects = [], 0
            await asyncio.gather(*(
                _report(d, part, part.interval * (first + i) / total, where)
                for i, d in enumerate(devices)
            ))
            pipe.send(("done", {d.spec.device_id: d.acked for d in devices},
                       sum(d.reconnects for d in devices)))
        for d in devices:
            d.close()

    asyncio.run(main())


class LiteFleet:
    """``devices`` split over ``processes`` workers; ``start()`` brings every connection up."""

    def __init__(self, specs: list[Spec], where: Address, processes: int) -> None:
        self.specs = specs
        self.where = where
        self.pipes: list[Connection] = []
        self.workers: list[SpawnProcess] = []
        share = -(-len(specs) // processes)
        context = multiprocessing.get_context("spawn")
        per_process = Address(where.host, where.port, where.ca, where.connects_per_s / processes,
                              where.timeout)
        for first in range(0, len(specs), share):
            parent, child = context.Pipe()
            worker = context.Process(
                target=_worker,
                args=(specs[first:first + share], per_process, child, first, len(specs)),
                daemon=True,
            )
            worker.start()
            self.pipes.append(parent)
            self.workers.append(worker)

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.pid is not None]

    def wait_up(self) -> int:
        """Block until every worker has tried all its connections; the number that failed."""
        return sum(self._answer(pipe, "up")[1] for pipe in self.pipes)

    async def run(self, part: Part) -> tuple[dict[str, list[float]], int]:
        """Run ``part`` in every worker: each device's acknowledged taken-at times, and how
        many connections had to be made again."""
        for pipe in self.pipes:
            pipe.send(part)
        answers = await asyncio.gather(*(
            asyncio.to_thread(self._answer, pipe, "done") for pipe in self.pipes
        ))
        acked: dict[str, list[float]] = {}
        for _, got, _ in answers:
            acked.update(got)
        return acked, sum(a[2] for a in answers)

    @staticmethod
    def _answer(pipe: Connection, kind: str) -> Any:
        answer = pipe.recv()
        assert answer[0] == kind, answer
        return answer

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for worker in self.workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()

