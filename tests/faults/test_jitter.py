"""The userspace jitter relay (tests/support/jitter.py), on loopback with real sockets: what it
delays still arrives whole and in order, both ways, and a close passes through."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.jitter import JitterRelay


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_relayed_bytes_arrive_whole_and_in_order_both_ways(echo_port: int) -> None:
    relay = JitterRelay("127.0.0.1", "127.0.0.1", [echo_port], max_delay_s=0.05, seed=7)
    sent = b"".join(f"{i:05d}".encode() for i in range(2000))
    try:
        with socket.create_connection(("127.0.0.1", relay.ports[echo_port]), timeout=30) as c:
            def write() -> None:
                c.sendall(sent)
                c.shutdown(socket.SHUT_WR)

            writer = threading.Thread(target=write)
            writer.start()
            got = b""
            while data := c.recv(65536):
                got += data
            writer.join()
    finally:
        relay.close()
    assert got == sent
    assert relay.chunks >= 2  # each direction went through the relay


def test_closing_the_relay_ends_its_connections(echo_port: int) -> None:
    relay = JitterRelay("127.0.0.1", "127.0.0.1", [echo_port], max_delay_s=0.01)
    with socket.create_connection(("127.0.0.1", relay.ports[echo_port]), timeout=30) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        relay.close()
        try:
            ended = c.recv(4) == b""
        except ConnectionError:
            ended = True
    assert ended
