"""The watch folder: ground stations copy SD cards or SMB shares in; each image is ingested once.

A file is taken only once its size and modification time have not changed for ``stable_s``
seconds (a copy in progress keeps growing). Files directly in the folder have no mission; files
one level down take the subfolder's name as their mission (``watch/flight-12/IMG_0001.JPG``).
Hidden files and names ending in ``.part``/``.tmp`` are ignored (how copy tools name partial
files). After ingestion a file moves to ``processed/`` (its bytes are in the store); a refused
one moves to ``failed/`` with ``<name>.reason.txt`` beside it. The store is keyed by the
image's sha256, so a crash between storing and moving cannot ingest an image twice: the file is
seen again, found known, and moved.

A copy can also stall (a flaky SMB share, a card reader that hiccups) for longer than
``stable_s``; the half-written file then decodes as corrupt. So a refused file is failed only
once it has been unchanged for ``incomplete_s``; until then it is held where it is and tried
again if it grows (found by the watch-folder stall fault scenario).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROCESSED = "processed"
FAILED = "failed"
IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".reason.txt")


class WatchFolder:
    def __init__(self, root: Path, stable_s: float = 2.0, incomplete_s: float = 60.0) -> None:
        self.root = root
        self.stable_s = stable_s
        self.incomplete_s = incomplete_s
        self._seen: dict[Path, tuple[int, int, float]] = {}  # size, mtime_ns, stable since
        self._held: set[Path] = set()  # refused while it may still be growing
        for sub in (PROCESSED, FAILED):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def _candidates(self) -> list[Path]:
        found: list[Path] = []
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if entry.name in (PROCESSED, FAILED):
                    continue
                found.extend(p for p in entry.iterdir() if p.is_file() and self._wanted(p))
            elif entry.is_file() and self._wanted(entry):
                found.append(entry)
        return sorted(found)

    @staticmethod
    def _wanted(path: Path) -> bool:
        return not path.name.startswith(".") and not path.name.lower().endswith(IGNORED_SUFFIXES)

    def scan(self, now: float | None = None) -> list[Path]:
        """Files whose size and mtime have been unchanged for ``stable_s``: ready to ingest."""
        now = time.monotonic() if now is None else now
        ready: list[Path] = []
        present = set()
        for path in self._candidates():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            present.add(path)
            key = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(path)
            if prev is None or prev[:2] != key:
                self._seen[path] = (*key, now)
                self._held.discard(path)
                if self.stable_s > 0:
                    continue
                prev = self._seen[path]
            wait_s = self.incomplete_s if path in self._held else self.stable_s
            if st.st_size > 0 and now - prev[2] >= wait_s:
                ready.append(path)
        for gone in set(self._seen) - present:
            del self._seen[gone]
            self._held.discard(gone)
        return ready

    def read(self, path: Path, limit: int) -> bytes | None:
        """At most ``limit`` bytes; None when the file is larger (it is not read further)."""
        with path.open("rb") as f:
            data = f.read(limit + 1)
        return None if len(data) > limit else data

    def mission_of(self, path: Path) -> str | None:
        return None if path.parent == self.root else path.parent.name

    def retry_later(self, path: Path) -> None:
        """Leave it: the queue is full. It is offered again on a later scan."""

    def done(self, path: Path, image_id: str) -> Path:
        return self._move(path, PROCESSED)

    def fail(self, path: Path, reason: str, now: float | None = None) -> Path | None:
        """Move a refused file to ``failed/``; None while it is held (it may still grow)."""
        now = time.monotonic() if now is None else now
        seen = self._seen.get(path)
        if seen is not None and path not in self._held and now - seen[2] < self.incomplete_s:
            self._held.add(path)
            log.info("watch folder: refused file held in case its copy resumes",
                     extra={"path": str(path), "reason": reason})
            return None
        target = self._move(path, FAILED)
        reason_file = target.with_name(target.name + ".reason.txt")
        reason_file.write_text(reason + "\n")
        log.warning("watch folder: refused a file", extra={"path": str(path), "reason": reason})
        return target

    def _move(self, path: Path, sub: str) -> Path:
        """Into ``sub/`` (keeping the mission folder), never overwriting an earlier file."""
        dest_dir = self.root / sub
        if path.parent != self.root:
            dest_dir = dest_dir / path.parent.name
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / path.name
        n = 1
        while target.exists():
            target = dest_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.replace(path, target)
        self._seen.pop(path, None)
        self._held.discard(path)
        return target
