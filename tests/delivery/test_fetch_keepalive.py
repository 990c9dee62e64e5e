"""The fetcher's pooled connections after an HTTP error: the error's body is read to its end,
so the next request on the same connection gets its own status line (CI's demo and fault
suite once saw ``BadStatusLine('0\\r\\n')``: a 404's last chunk read as the next response)."""

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api import exceptions

from daemon.api.tls import make_self_signed
from daemon.delivery.fetch import HttpsFetcher


class ChunkedHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every answer has a chunked body, as aiohttp sends."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = 404 if self.path == "/missing" else 200
        body = b"not here" if status == 404 else b"metadata"
        self.send_response(status)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")  # the last chunk arrives on its own
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    make_self_signed(crt, key, ["127.0.0.1"])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChunkedHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", crt
    httpd.shutdown()


def test_a_request_after_an_http_error_gets_its_own_answer(server: tuple[str, Path]) -> None:
    url, ca = server
    fetcher = HttpsFetcher(ca)
    for _ in range(5):
        with pytest.raises(exceptions.DownloadHTTPError) as missing:
            fetcher.open_range(f"{url}/missing", 0)
        assert missing.value.status_code == 404
        assert b"".join(fetcher.open_range(f"{url}/present", 0)[1]) == b"metadata"
