"""Fetchers: python-tuf's ``FetcherInterface`` plus ranged reads so a download can resume.

``HttpsFetcher`` talks to the hub's repository over HTTPS, trusting only the hub CA from the
bundle and presenting the device certificate (the hub serves its repository only to its own
devices and operators), with connect and read timeouts (a silent server cannot hold a read
forever; the total deadline is the downloader's). When the bundle names another repository URL
(the S3-compatible store itself, or a CDN in front of it), ``repository_source`` gives that
URL and a fetcher that also trusts the system's CAs and sends no device certificate. Tests
plug in a simulated repository that is itself a fetcher.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import Iterator
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK = 256 * 1024


class RangeFetcher(FetcherInterface):
    """A fetcher that can also start a file at an offset."""

    #: Bytes received so far (metadata and targets): what a delivery cost on the wire.
    bytes_received: int = 0

    @abc.abstractmethod
    def open_range(self, url: str, offset: int) -> tuple[int, Iterator[bytes]]:
        """Return (where the returned bytes start, the bytes). A server that ignores the range
        starts at 0. Raises ``DownloadHTTPError`` for an HTTP error, ``DownloadError`` else."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.open_range(url, 0)[1]


class HttpsFetcher(RangeFetcher):
    def __init__(
        self,
        ca: Path,
        client_cert: tuple[Path, Path] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        system_cas: bool = False,
    ):
        ctx = ssl.create_default_context(cafile=str(ca))
        if system_cas:
            ctx.load_default_certs()
        if client_cert is not None:
            ctx.load_cert_chain(client_cert[0], client_cert[1])
        self._pool = urllib3.PoolManager(
            ssl_context=ctx,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
        )

    def open_range(self, url: str, offset: int) -> tuple[int, Iterator[bytes]]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = self._pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if resp.status not in (200, 206):
            # Read the error body to its end first: left unread, the connection went back to
            # the pool and the next request read its last chunk ("0\r\n") as a status line.
            resp.drain_conn()
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        start = offset if resp.status == 206 else 0
        return start, self._chunks(resp, url)

    def _chunks(self, resp: urllib3.BaseHTTPResponse, url: str) -> Iterator[bytes]:
        finished = False
        try:
            for chunk in resp.stream(CHUNK):
                self.bytes_received += len(chunk)
                yield chunk
            finished = True
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: connection lost: {exc}") from exc
        finally:
            if not finished:
                resp.close()  # a body left half read must not be read by the next request
            resp.release_conn()


def repository_source(
    hub_url: str, ca: Path, client_cert: tuple[Path, Path], repository_url: str | None,
    read_timeout: float,
) -> tuple[str, HttpsFetcher]:
    """Where models come from and the fetcher for it: the hub's own repository (``hub_url``)
    with the device certificate, or the URL the bundle named. TUF, not the transport, vouches
    for what comes back either way."""
    if repository_url is None:
        return hub_url, HttpsFetcher(ca, client_cert, read_timeout=read_timeout)
    return repository_url, HttpsFetcher(ca, read_timeout=read_timeout, system_cas=True)
