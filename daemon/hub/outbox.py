"""The durable outbox: events for the hub survive restarts and hub outages, in order.

Events are rows in SQLite. A drain task publishes them oldest first whenever the hub link is
up and marks each one sent once the broker has acknowledged it (QoS 1). A row is deleted only
when the hub says it has stored the event (``ack``, from ``spoke/v1/{device}/events/ack``): the
broker keeps what it has acknowledged in memory, so a broker killed before it handed an event
to the hub would otherwise lose it (found by the fault scenario "broker killed -9"). A sent
event the hub has not acknowledged after ``resend_s`` is published again; the hub
de-duplicates by event id, so delivery is at least once and storage exactly once. The outbox
is bounded: past ``max_events`` the oldest are dropped and counted, so a long outage cannot
fill the disk.
"""

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.errors import LinkError
from appliance.payloads import Event
from appliance.service import TaskGroupService
from appliance.store import connect

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS outbox_stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# publish(event_json) -> None; raises LinkError while the hub is unreachable.
Publisher = Callable[[bytes], Awaitable[None]]


class Outbox(TaskGroupService):
    name = "outbox"

    def __init__(self, path: Path, max_events: int = 10_000, retry_s: float = 1.0,
                 resend_s: float = 30.0, on_drop: Callable[[int], None] | None = None) -> None:
        """``on_drop``: told how many of the oldest events a full outbox dropped (metrics)."""
        super().__init__()
        self.max_events = max_events
        self.retry_s = retry_s
        self.resend_s = resend_s
        self._conn: sqlite3.Connection = connect(path)
        self._conn.executescript(SCHEMA)
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(outbox)")}
        if "sent_at" not in columns:  # an outbox written before hub acknowledgements
            with self._conn:
                self._conn.execute("ALTER TABLE outbox ADD COLUMN sent_at REAL")
        self._wake = asyncio.Event()
        self._publisher: Publisher | None = None
        self.on_drop = on_drop

    def put(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """Store an event durably (it is on disk when this returns) and return its id.

        A caller that may repeat itself after a crash passes a deterministic ``event_id``: a
        repeat still waiting here is ignored, one already delivered is dropped by the hub.
        """
        event = Event(id=event_id or uuid.uuid4().hex, kind=kind, ts=time.time(), data=data)
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO outbox (id, kind, payload, created_at)"
                " VALUES (?, ?, ?, ?)",
                (event.id, kind, event.model_dump_json(), event.ts),
            )
            dropped = self._trim()
        if dropped:
            log.warning("outbox full; dropped the oldest events", extra={"dropped": dropped})
            if self.on_drop:
                self.on_drop(dropped)
        self._wake.set()
        return event.id

    def _trim(self) -> int:
        excess = self.depth() - self.max_events
        if excess <= 0:
            return 0
        self._conn.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
            (excess,),
        )
        self._conn.execute(
            "INSERT INTO outbox_stats (name, value) VALUES ('dropped', ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (excess,),
        )
        return excess

    def depth(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped(self) -> int:
        row = self._conn.execute("SELECT value FROM outbox_stats WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def ack(self, event_ids: list[str]) -> int:
        """The hub has stored these events: forget them. Returns how many were still here."""
        with self._conn:
            cur = self._conn.executemany("DELETE FROM outbox WHERE id = ?",
                                         [(i,) for i in event_ids])
        return cur.rowcount

    def pending(self) -> list[Event]:
        """The events the hub has not yet acknowledged, oldest first (what ``spoke status``
        and tests see)."""
        rows = self._conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        return [Event.model_validate_json(r["payload"]) for r in rows]

    def close(self) -> None:
        """Close the database without starting or stopping the drain (an outbox used only to
        queue events)."""
        self._conn.close()

    def attach(self, publisher: Publisher | None) -> None:
        """Give the outbox a way to publish (the hub link), or take it away."""
        self._publisher = publisher
        self._wake.set()

    async def start(self) -> None:
        self.spawn(self._drain(), "drain")

    async def stop(self) -> None:
        await self.cancel_tasks()
        self.close()

    async def _drain(self) -> None:
        while True:
            resend = self._next_resend() if self._publisher is not None else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), resend)
            self._wake.clear()
            while self._publisher is not None:
                row = self._conn.execute(
                    "SELECT seq, payload FROM outbox WHERE sent_at IS NULL OR sent_at <= ?"
                    " ORDER BY seq LIMIT 1",
                    (time.time() - self.resend_s,),
                ).fetchone()
                if row is None:
                    break
                try:
                    await self._publisher(row["payload"].encode())
                except LinkError:
                    await asyncio.sleep(self.retry_s)
                    continue
                with self._conn:
                    self._conn.execute("UPDATE outbox SET sent_at = ? WHERE seq = ?",
                                       (time.time(), row["seq"]))
                log.debug("event sent", extra={"seq": row["seq"]})

    def _next_resend(self) -> float | None:
        """Seconds until the oldest unacknowledged event is due again; None when none is."""
        row = self._conn.execute("SELECT MIN(sent_at) FROM outbox").fetchone()
        if row[0] is None:
            return None
        return max(0.0, row[0] + self.resend_s - time.time())
