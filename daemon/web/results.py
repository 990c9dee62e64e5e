"""Read-only views of the uplink results store for the status page and the mission report.

The store (``daemon/uplink/store.py``) has one writer thread inside the daemon. These readers
open their own short-lived connection with ``mode=ro`` (WAL lets readers run beside the
writer), so the status page and ``spoke report`` never take the writer's lock and work the
same whether the daemon runs or not. Call them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.severity import BACKGROUND, DEFAULT_SEVERITY, SEVERITY
from daemon.uplink.store import JSON_COLUMNS, ImageStatus


def defects(row: dict[str, Any]) -> list[str]:
    """The defect labels of a done image (``background`` is not a finding)."""
    if row.get("status") != ImageStatus.DONE:
        return []
    return [lab for lab in (row.get("labels") or []) if lab != BACKGROUND]


def severity(row: dict[str, Any]) -> tuple[int, float]:
    """(class, probability) of an image's worst finding; (0, 0.0) without one. Sorts worst
    last, so ``sorted(..., key=severity, reverse=True)`` puts the worst first."""
    found = defects(row)
    if not found:
        return (0, 0.0)
    probs = row.get("probs") or {}
    return max((SEVERITY.get(lab, DEFAULT_SEVERITY), float(probs.get(lab, 0.0)))
               for lab in found)


def decode_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


class Results:
    """The results of ``STATE/uplink`` read-only; each method opens and closes a connection."""

    def __init__(self, uplink_root: Path) -> None:
        self.root = uplink_root
        self.db_path = uplink_root / "results.db"
        self.images_dir = uplink_root / "images"

    def exists(self) -> bool:
        return self.db_path.exists()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def mission(self, mission: str) -> list[dict[str, Any]]:
        if not self.exists():
            return []
        with self._conn() as conn:
            return [decode_row(r) for r in conn.execute(
                "SELECT * FROM images WHERE mission = ? ORDER BY seq", (mission,))]

    def get(self, image_id: str) -> dict[str, Any] | None:
        if not self.exists():
            return None
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else decode_row(row)

    def read_image(self, row: dict[str, Any]) -> bytes | None:
        if not row.get("stored"):
            return None
        try:
            return (self.images_dir / row["path"]).read_bytes()
        except FileNotFoundError:
            return None

    def activity(self, recent: int = 12, now: float | None = None) -> dict[str, Any]:
        """What the status page shows of the uplink: totals, the last hour, recent findings."""
        now = time.time() if now is None else now
        empty: dict[str, Any] = {
            "total": 0, "by_status": {s.value: 0 for s in ImageStatus}, "last_hour": 0,
            "last_received_at": None, "last_finished_at": None, "missions": [],
            "recent": [], "failed": []}
        if not self.exists():
            return empty
        with self._conn() as conn:
            by_status = {s.value: 0 for s in ImageStatus}
            for r in conn.execute("SELECT status, COUNT(*) AS n FROM images GROUP BY status"):
                by_status[r["status"]] = r["n"]
            # Each of these runs on an index (received_at, seq): no full scan per refresh.
            last = conn.execute(
                "SELECT (SELECT MAX(received_at) FROM images) AS rec, "
                "(SELECT finished_at FROM images WHERE status = 'done' "
                " ORDER BY seq DESC LIMIT 1) AS fin, "
                "(SELECT COUNT(*) FROM images WHERE received_at >= ? AND status = 'done') "
                "AS hour", (now - 3600,)).fetchone()
            missions = [dict(r) for r in conn.execute(
                "SELECT mission, COUNT(*) AS images, MAX(received_at) AS last_received_at "
                "FROM images WHERE mission IN (SELECT DISTINCT mission FROM images "
                " WHERE received_at >= ? AND mission IS NOT NULL) GROUP BY mission "
                "ORDER BY last_received_at DESC LIMIT 5", (now - 7 * 86400,))]
            found = [decode_row(r) for r in conn.execute(
                "SELECT id, mission, drone, status, labels, probs, captured_at, received_at, "
                "finished_at, latitude, longitude, stored, path, tiles, width, height "
                "FROM images WHERE status = 'done' AND labels IS NOT NULL "
                "AND EXISTS (SELECT 1 FROM json_each(images.labels) WHERE value != ?) "
                "ORDER BY seq DESC LIMIT ?", (BACKGROUND, recent))]
            failed = [dict(r) for r in conn.execute(
                "SELECT id, mission, reason, finished_at FROM images WHERE status = 'failed' "
                "ORDER BY seq DESC LIMIT 3")]
        return {
            "total": sum(by_status.values()), "by_status": by_status,
            "last_hour": last["hour"] or 0, "last_received_at": last["rec"],
            "last_finished_at": last["fin"], "missions": missions,
            "recent": found, "failed": failed,
        }

    def missions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Missions with processed images, the most recently received first."""
        if not self.exists():
            return []
        with self._conn() as conn:
            return [dict(r) for r in conn.execute(
                "SELECT mission, COUNT(*) AS images, MAX(received_at) AS last_received_at "
                "FROM images WHERE status = 'done' AND mission IS NOT NULL GROUP BY mission "
                "ORDER BY last_received_at DESC LIMIT ?", (limit,))]

    def newest_done(self, mission: str | None, limit: int) -> list[dict[str, Any]]:
        """Processed images (with their tiles), newest first, of one mission or all."""
        if not self.exists():
            return []
        where, args = ("AND mission = ?", [mission]) if mission is not None else ("", [])
        with self._conn() as conn:
            return [decode_row(r) for r in conn.execute(
                "SELECT id, mission, drone, status, labels, probs, tiles, width, height, "
                f"stored, path, received_at, captured_at FROM images WHERE status = 'done' "
                f"{where} ORDER BY seq DESC LIMIT ?", (*args, limit))]

    def used_by(self, client: str) -> bool:
        """Whether any image was posted with the token named ``client``."""
        if not self.exists():
            return False
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM images WHERE client = ? LIMIT 1",
                                (client,)).fetchone() is not None


def thumbnail(data: bytes, row: dict[str, Any], side: int = 320, quality: int = 75,
              max_boxes: int = 6, heat: bool = False) -> bytes:
    """A small JPEG of a stored image with the tiles that found its defects most surely
    outlined; with ``heat``, under the same red-to-yellow heatmap as the API's overlay.png
    (``models.pipeline.render_overlay``) of the highest defect probability per pixel.

    Pillow and numpy only (no model code, so ``spoke report`` starts fast). The image was
    fully validated (size and pixel bounds) when it was ingested; JPEGs are decoded at a
    reduced scale (``draft``), so a 12 MP frame costs a few milliseconds.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (side * 2, side * 2))
        width, height = row.get("width") or im.width, row.get("height") or im.height
        small = im.convert("RGB")
    small.thumbnail((side, side))
    sx, sy = small.width / width, small.height / height
    defect_labels = [lab for lab in (row.get("probs") or {}) if lab != BACKGROUND]
    found = [lab for lab in (row.get("labels") or []) if lab != BACKGROUND]
    tiles = row.get("tiles") or []
    if heat and tiles:
        level = np.zeros((small.height, small.width), dtype=np.float32)
        for tile in tiles:
            p = max((tile["probs"].get(lab, 0.0) for lab in defect_labels), default=0.0)
            x0, y0, x1, y1 = (round(v * s) for v, s in zip(tile["box"], (sx, sy, sx, sy),
                                                          strict=True))
            np.maximum(level[y0:y1, x0:x1], p, out=level[y0:y1, x0:x1])
        base = np.asarray(small, dtype=np.float32)
        color = np.stack([np.full_like(level, 255.0), 255.0 * level, np.zeros_like(level)], -1)
        alpha = (0.55 * level)[..., None]
        small = Image.fromarray((base * (1 - alpha) + color * alpha).clip(0, 255)
                                .astype(np.uint8))
    draw = ImageDraw.Draw(small)
    scored = []
    for tile in tiles:
        probs = tile.get("probs") or {}
        worst = max((probs.get(lab, 0.0) for lab in found), default=0.0)
        if worst >= 0.5:
            scored.append((worst, tile["box"]))
    # The strongest few: an outline on every tile would hide the picture.
    for worst, (x0, y0, x1, y1) in sorted(scored, reverse=True)[:max_boxes]:
        draw.rectangle((x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1),
                       outline=(255, 64 + int(150 * (1 - worst)), 0), width=2)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=quality)
    return out.getvalue()
