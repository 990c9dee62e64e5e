"""Delay jitter without netem: a userspace TCP relay that holds each chunk for a random time.

Kernels without ``sch_netem`` (this one: ``tc qdisc add ... netem`` answers "Specified qdisc
kind is unknown") cannot delay packets in the kernel, so ``tests.support.netns.Link.degrade``
sends the appliance's connections to the hub through this relay instead (nftables DNAT inside
the namespace). For every chunk it reads, in each direction, the relay draws a delay in
``[0, max_delay_s]`` and sends the chunk once that time has passed, but never before the
chunk ahead of it: the bytes of one connection stay in order (TCP would put reordered packets
back in order before the application saw them anyway), while chunks of different connections
and of the two directions overtake each other. A kernel with netem gets netem instead.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time
from collections.abc import Callable

CHUNK = 16384


class JitterRelay:
    """Listens on ``listen_host`` (one port per target port, see ``ports``) and relays each
    accepted connection to ``target_host`` on the matching port, with jitter."""

    def __init__(self, listen_host: str, target_host: str, target_ports: list[int],
                 max_delay_s: float, seed: int | None = None) -> None:
        self.target_host = target_host
        self.max_delay_s = max_delay_s
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.ports: dict[int, int] = {}  # target port -> the relay's port for it
        self.chunks = 0
        for target in target_ports:
            server = socket.create_server((listen_host, 0))
            self._sockets.append(server)
            self.ports[target] = server.getsockname()[1]
            self._thread(self._accept, server, target)

    @staticmethod
    def _thread(fn: Callable[..., None], *args: object) -> None:
        threading.Thread(target=fn, args=args, daemon=True).start()

    def _delay(self) -> float:
        with self._lock:
            return self.rng.uniform(0, self.max_delay_s)

    def _accept(self, server: socket.socket, target: int) -> None:
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.target_host, target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._thread(self._pump, client, upstream)
            self._thread(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Read from ``src``; a sender thread writes each chunk to ``dst`` when its time comes."""
        due: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._thread(self._send, due, dst, src)
        last = 0.0
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            last = max(last, time.monotonic() + self._delay())
            due.put((last, data))
            if not data:
                return
            with self._lock:
                self.chunks += 1

    def _send(self, due: queue.Queue[tuple[float, bytes]], dst: socket.socket,
              src: socket.socket) -> None:
        while True:
            at, data = due.get()
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                if not data:  # the other side closed: pass the close on
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                for s in (src, dst):  # one end is gone: end both
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                return

    def close(self) -> None:
        """Stop listening and end every relayed connection (their clients see a reset)."""
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
