"""Hostile payloads for the hub's MQTT ingest, sent by a real client with a real device
certificate on each of the device's own topics.

Each case is (topic kind, payload, refused?): random bytes, truncated and wrongly shaped
JSON, nesting deep enough to exhaust a parser, payloads past the hub's 256 KiB limit, and
valid events sent twice and out of order (these are taken, each once). ``expected_refusals``
is how many the hub must count in ``spoke_hub_messages_refused_total``.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from dataclasses import dataclass
from pathlib import Path

from appliance import mqtt, topics

KINDS = ("available", "state", "health", "events")
TOPIC = {"available": topics.available, "state": topics.state, "health": topics.health,
         "events": topics.events}


@dataclass(frozen=True)
class Case:
    kind: str
    payload: bytes
    refused: bool


def cases(seed: int, per_kind: int = 25) -> list[Case]:
    rng = random.Random(seed)
    out: list[Case] = []
    valid_event = json.dumps({"id": "e0", "kind": "fuzz", "ts": 1.0, "data": {}}).encode()
    for kind in KINDS:
        for _ in range(per_kind):  # random bytes: never a valid payload of any kind
            out.append(Case(kind, b"\x00" + rng.randbytes(rng.randrange(1, 2048)), True))
        shapes = [b"[]", b"42", b'"online"', b"null", b"{", b'{"id": 1}', valid_event[:20],
                  b"[" * 100_000 + b"]" * 100_000, b'{"a": "' + b"x" * (300 * 1024) + b'"}']
        for payload in shapes:  # reported state too must fit its schema and name its sender
            out.append(Case(kind, payload, True))
    # Valid events, out of order and each twice: taken, stored once.
    for i in rng.sample(range(20), 20):
        event = json.dumps({"id": f"fuzz-{seed}-{i}", "kind": "fuzz", "ts": float(20 - i),
                            "data": {"i": i}}).encode()
        out += [Case("events", event, False), Case("events", event, False)]
    rng.shuffle(out)
    return out


def expected_refusals(batch: list[Case]) -> int:
    return sum(c.refused for c in batch)


async def send(batch: list[Case], device_id: str, identity: Path, host: str, port: int) -> None:
    """Publish every case at QoS 1 from the device's own certificate (a client id of its
    own, so the device's real session is not taken over)."""
    tls: ssl.SSLContext = mqtt.tls_context(identity / "ca.crt", identity / "device.crt",
                                           identity / "device.key")
    async with mqtt.client(host, port, f"fuzz-{device_id[:12]}", tls) as client:
        for case in batch:
            await client.publish(TOPIC[case.kind](device_id), case.payload, qos=1)
        await asyncio.sleep(0)
