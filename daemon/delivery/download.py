"""Download one TUF target: bounded by its signed length, a total deadline, resumable.

The bytes go to ``<partial>`` (kept across failures and restarts, so the next attempt asks for
the rest with an HTTP range). Past the signed length the download stops at once (endless data);
at the end length and sha256 are checked against the signed target info, and a mismatch
deletes the partial file (tampered bytes are not resumed from).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tuf.api import exceptions
from tuf.api.metadata import TargetFile

from daemon.delivery.errors import DeliveryInterrupted, ModelRefused
from daemon.delivery.fetch import RangeFetcher

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _tqdm_progress(total: int, initial: int, desc: str) -> tuple[Progress, Callable[[], None]]:
    """A progress bar when a person is watching (stderr is a terminal), else nothing."""
    if not sys.stderr.isatty():
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc)

    def update(done: int, total: int) -> None:
        bar.update(done - bar.n)

    return update, bar.close


def download_target(
    fetcher: RangeFetcher,
    url: str,
    info: TargetFile,
    partial: Path,
    deadline: float,
    progress: Progress | None = None,
) -> Path:
    """Fetch ``url`` into ``partial`` until it holds exactly the signed bytes; return it.

    ``deadline`` is a ``time.monotonic()`` value. Raises ``ModelRefused`` (endless data, hash
    mismatch) or ``DeliveryInterrupted`` (link lost, deadline, disk full) with the partial file
    kept for the next attempt where that makes sense.
    """
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if have > info.length:
        partial.unlink()
        have = 0
    update, close = (progress, lambda: None) if progress else _tqdm_progress(
        info.length, have, info.path.rsplit("/", 1)[-1]
    )
    try:
        if have < info.length:
            have = _fetch_rest(fetcher, url, info, partial, have, deadline, update)
    finally:
        close()
    try:
        with partial.open("rb") as f:
            info.verify_length_and_hashes(f)
    except exceptions.LengthOrHashMismatchError as exc:
        partial.unlink(missing_ok=True)
        raise ModelRefused("hash-mismatch", f"{info.path}: {exc}") from exc
    return partial


def _fetch_rest(
    fetcher: RangeFetcher,
    url: str,
    info: TargetFile,
    partial: Path,
    have: int,
    deadline: float,
    update: Progress,
) -> int:
    if time.monotonic() >= deadline:
        raise DeliveryInterrupted("deadline", f"{info.path}: download deadline passed")
    try:
        start, chunks = fetcher.open_range(url, have)
    except exceptions.DownloadError as exc:
        raise DeliveryInterrupted("hub-unreachable", f"{info.path}: {exc}") from exc
    if start != have:
        log.info("server ignored the range; starting over", extra={"target": info.path})
        have = start
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, have)
        os.lseek(fd, have, os.SEEK_SET)
        try:
            for chunk in chunks:
                if have + len(chunk) > info.length:
                    os.close(fd)
                    fd = -1
                    partial.unlink(missing_ok=True)
                    raise ModelRefused(
                        "endless-data",
                        f"{info.path}: the server sent more than the signed {info.length} bytes",
                    )
                _write_all(fd, chunk)
                have += len(chunk)
                update(have, info.length)
                if time.monotonic() >= deadline:
                    raise DeliveryInterrupted(
                        "deadline",
                        f"{info.path}: download deadline passed at {have}/{info.length} bytes",
                    )
        except exceptions.DownloadError as exc:
            raise DeliveryInterrupted(
                "hub-unreachable", f"{info.path}: interrupted at {have}/{info.length} bytes: {exc}"
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                fd = -1
                partial.unlink(missing_ok=True)
                raise DeliveryInterrupted(
                    "disk-full", f"{info.path}: no space left at {have}/{info.length} bytes"
                ) from exc
            raise
        if fd >= 0:
            os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    return have


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
