"""A second, independent MQTT client (paho, synchronous) that tries what the broker must stop."""

import queue
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class Probe:
    def __init__(
        self, port: int, ca: Path, cert: Path | None, key: Path | None, client_id: str
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(ctx)
        self.port = port
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._connect_rc: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda c, u, m: self.messages.put(m)

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:  # type: ignore[no-untyped-def]
        self._connect_rc = rc
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, rcs, props=None) -> None:  # type: ignore[no-untyped-def]
        with self._acked:
            self._subacks[mid] = list(rcs)
            self._acked.notify_all()

    def _on_publish(self, client, userdata, mid, rc, props=None) -> None:  # type: ignore[no-untyped-def]
        with self._acked:
            self._pubacks[mid] = rc
            self._acked.notify_all()

    def connect(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted the connection (TLS and MQTT)."""
        try:
            self.client.connect("localhost", self.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        if not self._connected.wait(timeout):
            return False
        return self._connect_rc is not None and not self._connect_rc.is_failure

    def subscribe(self, topic: str, timeout: float = 5.0) -> bool:
        """True if the broker granted the subscription."""
        _, mid = self.client.subscribe(topic, qos=1)
        with self._acked:
            self._acked.wait_for(lambda: mid in self._subacks, timeout)
        codes = self._subacks.get(mid, [])
        return bool(codes) and not any(c.is_failure for c in codes)

    def publish(
        self, topic: str, payload: bytes, properties: Properties | None = None, timeout: float = 5.0
    ) -> ReasonCode | None:
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        with self._acked:
            self._acked.wait_for(lambda: info.mid in self._pubacks, timeout)
        return self._pubacks.get(info.mid)

    def received(self, topic: str, timeout: float = 2.0) -> list[bytes]:
        """Payloads that arrived on ``topic`` within ``timeout`` seconds."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if m.topic == topic:
                got.append(m.payload)
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
