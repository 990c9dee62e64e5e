"""The results store: one row per image in SQLite (sqlite-utils, WAL), image bytes on disk.

Layout under ``STATE/uplink/``: ``results.db`` and ``images/<first two hex>/<sha256>``. An
image file is written atomically (temp, fsync, rename, fsync dir) *before* its row is committed,
and the connection runs with ``synchronous=FULL``, so once ``add`` returns (and the API answers
202) a power loss or kill -9 cannot lose the image. All methods are synchronous and meant to be
called from a single thread: the service funnels them through one writer thread.

Opening the store removes orphans: an image file (or a temp file of ``atomic_write``) with no
row is what a crash between the file's rename and the row's commit leaves. No client was told
202 for it, so it is deleted, and the count is kept in ``orphans_removed``.

Retention (``sweep``) deletes stored image files oldest first past a byte budget or an age, and
only for images that are done or failed; the result rows stay.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.fsutil import atomic_write
from appliance.store import connect


class ImageStatus(StrEnum):
    """Where an accepted image is: waiting, being inferred, or finished either way."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


PENDING = (ImageStatus.QUEUED, ImageStatus.RUNNING)
JSON_COLUMNS = ("labels", "probs", "tiles", "timings", "warnings")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    client TEXT,
    content_type TEXT NOT NULL,
    format TEXT,
    bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    stored INTEGER NOT NULL DEFAULT 1,
    mission TEXT,
    drone TEXT,
    captured_at TEXT,
    received_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    width INTEGER,
    height INTEGER,
    latitude REAL,
    longitude REAL,
    altitude REAL,
    labels TEXT,
    probs TEXT,
    tiles TEXT,
    timings TEXT,
    warnings TEXT,
    model_name TEXT,
    model_version TEXT,
    backend TEXT
);
CREATE INDEX IF NOT EXISTS images_by_mission ON images (mission, seq);
CREATE INDEX IF NOT EXISTS images_by_status ON images (status, seq);
CREATE INDEX IF NOT EXISTS images_by_received ON images (received_at);
"""


class StorageFull(Exception):
    """The data partition (or the database on it) has no room: nothing was stored."""


@contextlib.contextmanager
def _room() -> Iterator[None]:
    """Turn "no space left" from the filesystem or SQLite into ``StorageFull`` (found by the
    fault scenario "data partition full": it was a 500 and it stopped the workers)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StorageFull(str(exc)) from exc
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(str(exc)) from exc
        raise


@dataclass(frozen=True)
class NewImage:
    """What ingestion knows before inference: identity, provenance, EXIF facts."""

    id: str
    content_type: str
    data: bytes
    source: str = "api"
    client: str | None = None
    mission: str | None = None
    drone: str | None = None
    captured_at: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    gps: tuple[float, float, float | None] | None = None
    warnings: tuple[str, ...] = field(default=())


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The seq a cursor stands for; raises ValueError for anything we did not hand out."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    if not raw.startswith("s") or not raw[1:].isdigit() or len(raw) > 20:
        raise ValueError("not a cursor this API issued")
    return int(raw[1:])


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.images_dir = root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection = connect(root / "results.db")
        conn.execute("PRAGMA synchronous=FULL")  # a 202 promises the row survives power loss
        conn.executescript(SCHEMA)
        self.db = sqlite_utils.Database(conn)
        self.table = self.db.table("images")
        self.orphans_removed = self._remove_orphans()

    def close(self) -> None:
        self.db.conn.close()

    def _remove_orphans(self) -> int:
        """Delete image files without a row (found by the power-cut-mid-burst fault scenario)."""
        removed = 0
        for path in self.images_dir.glob("*/*"):
            known = not path.name.startswith(".") and self.db.execute(
                "SELECT 1 FROM images WHERE id = ?", [path.name]).fetchone() is not None
            if not known:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- writes --------------------------------------------------------------------------

    def add(self, image: NewImage) -> tuple[dict[str, Any], bool]:
        """Store the bytes, then the row; returns (row, created). A known id is left as it is."""
        existing = self.get(image.id)
        if existing is not None:
            return existing, False
        rel = f"{image.id[:2]}/{image.id}"
        with _room():
            atomic_write(self.images_dir / rel, image.data, mode=0o640)
        lat, lon, alt = image.gps if image.gps else (None, None, None)
        row = {
            "id": image.id, "status": ImageStatus.QUEUED, "source": image.source,
            "client": image.client,
            "content_type": image.content_type, "format": image.format,
            "bytes": len(image.data), "path": rel, "stored": 1, "mission": image.mission,
            "drone": image.drone, "captured_at": image.captured_at, "received_at": time.time(),
            "width": image.width, "height": image.height, "latitude": lat, "longitude": lon,
            "altitude": alt, "warnings": json.dumps(list(image.warnings)),
        }
        try:
            with _room(), self.db.conn:  # one writer: nobody else can take the next seq
                row["seq"] = self.db.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM images").fetchone()[0]
                self.table.insert(row, ignore=True)
        except StorageFull:
            (self.images_dir / rel).unlink(missing_ok=True)  # no row, no 202: no file either
            raise
        got = self.get(image.id)
        assert got is not None
        return got, True

    def mark_running(self, image_id: str, model_name: str, model_version: str,
                     backend: str) -> None:
        with _room(), self.db.conn:
            self.table.update(image_id, {"status": ImageStatus.RUNNING, "started_at": time.time(),
                                         "model_name": model_name,
                                         "model_version": model_version, "backend": backend})

    def mark_done(self, image_id: str, result: dict[str, Any]) -> None:
        """``result``: labels, probs, tiles, timings (and optionally width/height/GPS)."""
        values = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in result.items()}
        values.update(status=ImageStatus.DONE, reason=None, finished_at=time.time())
        with _room(), self.db.conn:
            self.table.update(image_id, values)

    def mark_failed(self, image_id: str, reason: str) -> None:
        with _room(), self.db.conn:
            self.table.update(image_id, {"status": ImageStatus.FAILED, "reason": reason[:1000],
                                         "finished_at": time.time()})

    def requeue_interrupted(self) -> list[str]:
        """After a crash: work that was running goes back to queued; all pending ids, in order."""
        with self.db.conn:
            self.db.execute("UPDATE images SET status = ?, started_at = NULL WHERE status = ?",
                            (ImageStatus.QUEUED, ImageStatus.RUNNING))
        return [r["id"] for r in self.db.query(
            "SELECT id FROM images WHERE status = ? ORDER BY seq", [ImageStatus.QUEUED])]

    # -- reads ---------------------------------------------------------------------------

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for key in JSON_COLUMNS:
            if out.get(key) is not None:
                out[key] = json.loads(out[key])
        return out

    def get(self, image_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM images WHERE id = ?", [image_id]))
        return self._row(rows[0]) if rows else None

    def image_path(self, row: dict[str, Any]) -> Path:
        return self.images_dir / row["path"]

    def read_image(self, row: dict[str, Any]) -> bytes | None:
        if not row["stored"]:
            return None
        try:
            return self.image_path(row).read_bytes()
        except FileNotFoundError:
            return None

    def page(self, mission: str | None = None, label: str | None = None,
             since: float | None = None, status: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Oldest first; ``cursor`` continues after the last row of the previous page."""
        where: list[str] = ["seq > ?"]
        args: list[Any] = [decode_cursor(cursor) if cursor else 0]
        if mission is not None:
            where.append("mission = ?")
            args.append(mission)
        if label is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(images.labels) WHERE value = ?)")
            args.append(label)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        rows = [self._row(r) for r in self.db.query(
            f"SELECT * FROM images WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*args, limit + 1])]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]["seq"]) if more else None

    def mission(self, mission: str) -> list[dict[str, Any]]:
        return [self._row(r) for r in self.db.query(
            "SELECT * FROM images WHERE mission = ? ORDER BY seq", [mission])]

    def pending_count(self) -> int:
        return int(self.db.execute(
            "SELECT COUNT(*) FROM images WHERE status IN (?, ?)", PENDING).fetchone()[0])

    # -- retention -----------------------------------------------------------------------

    def sweep(self, max_bytes: int, max_age_s: float, now: float | None = None) -> list[str]:
        """Delete stored files of processed images, oldest first, until the stored total is
        within ``max_bytes``, and every one older than ``max_age_s``. Pending images are never
        touched (they may push the total over the budget until they are processed)."""
        now = time.time() if now is None else now
        total = int(self.db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM images WHERE stored = 1").fetchone()[0])
        removed: list[str] = []
        for row in self.db.query(
                "SELECT id, path, bytes, received_at FROM images WHERE stored = 1 "
                "AND status IN (?, ?) ORDER BY received_at, seq",
                [ImageStatus.DONE, ImageStatus.FAILED]):
            if total <= max_bytes and now - row["received_at"] <= max_age_s:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.images_dir / row["path"])
            with self.db.conn:
                self.table.update(row["id"], {"stored": 0})
            total -= row["bytes"]
            removed.append(row["id"])
        return removed
