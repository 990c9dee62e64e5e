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

Every database call runs on the outbox's own thread, one at a time in the order asked (as the
uplink's store does), never on the event loop: a slow disk, or a write lock held elsewhere,
stops the outbox and not the daemon.
"""

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
T = TypeVar("T")


async def _outcome(work: Future[T]) -> T:
    """Wait for work queued on the outbox thread. A caller cancelled meanwhile does not take
    it back: a queued write always happens."""
    return await asyncio.shield(asyncio.wrap_future(work))


def _log_failure(event: Event, stored: Future[None]) -> None:
    """An event ``put`` queued could not be written (its caller did not wait to hear it)."""
    error = stored.exception()
    if error is not None:
        log.error("an event could not be stored", exc_info=error,
                  extra={"event": event.id, "kind": event.kind})


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: Publisher | None = None
        self.on_drop = on_drop
        self._db = ThreadPoolExecutor(1, thread_name_prefix="outbox-db")
        self._depth = self._count()

    def put(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """Queue an event for the disk and return its id at once (what services' ``emit``
        hooks call, from any thread). It is stored after everything asked of the outbox
        before it and before everything asked after; a write that fails is logged. A caller
        whose next step must not happen without the event on disk awaits ``add`` instead.

        A caller that may repeat itself after a crash passes a deterministic ``event_id``: a
        repeat still waiting here is ignored, one already delivered is dropped by the hub.
        """
        event, stored = self._queue(kind, data, event_id)
        stored.add_done_callback(functools.partial(_log_failure, event))
        return event.id

    async def add(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """``put``, returning once the event is on disk (raising what its write raised)."""
        event, stored = self._queue(kind, data, event_id)
        await _outcome(stored)
        return event.id

    def _queue(self, kind: str, data: dict[str, Any], event_id: str | None
               ) -> tuple[Event, Future[None]]:
        event = Event(id=event_id or uuid.uuid4().hex, kind=kind, ts=time.time(), data=data)
        return event, self._db.submit(self._insert, event)

    def _insert(self, event: Event) -> None:
        """On the outbox thread: store ``event``, then keep the newest ``max_events``."""
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO outbox (id, kind, payload, created_at)"
                " VALUES (?, ?, ?, ?)",
                (event.id, event.kind, event.model_dump_json(), event.ts),
            )
            dropped = self._trim()
        if dropped:
            log.warning("outbox full; dropped the oldest events", extra={"dropped": dropped})
            if self.on_drop:
                self.on_drop(dropped)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing drains anyway
                self._loop.call_soon_threadsafe(self._wake.set)

    def _trim(self) -> int:
        """Drop the oldest events past ``max_events``; returns how many (keeps ``depth``)."""
        count = self._count()
        excess = count - self.max_events
        self._depth = min(count, self.max_events)
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

    def _count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def depth(self) -> int:
        """How many events wait for the hub, as of the outbox's last write (never waits)."""
        return self._depth

    def _wait(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work`` on the outbox thread after everything asked before it, and wait."""
        return self._db.submit(work, *args).result()

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await _outcome(self._db.submit(work, *args))

    def dropped(self) -> int:
        """How many events a full outbox dropped, ever (waits for the outbox thread)."""
        return self._wait(self._dropped)

    def _dropped(self) -> int:
        row = self._conn.execute("SELECT value FROM outbox_stats WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    async def ack(self, event_ids: list[str]) -> int:
        """The hub has stored these events: forget them. Returns how many were still here."""
        return await self._run(self._forget, event_ids)

    def _forget(self, event_ids: list[str]) -> int:
        with self._conn:
            cur = self._conn.executemany("DELETE FROM outbox WHERE id = ?",
                                         [(i,) for i in event_ids])
        self._depth = self._count()
        return cur.rowcount

    def pending(self) -> list[Event]:
        """The events the hub has not yet acknowledged, oldest first, everything put before
        the call included (it waits for the outbox thread: for tests, not the event loop)."""
        return self._wait(self._pending)

    def _pending(self) -> list[Event]:
        rows = self._conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        return [Event.model_validate_json(r["payload"]) for r in rows]

    def close(self) -> None:
        """Store what is still queued and close the database, without starting or stopping
        the drain (an outbox used only to queue events)."""
        self._db.shutdown(wait=True)
        self._conn.close()

    def attach(self, publisher: Publisher | None) -> None:
        """Give the outbox a way to publish (the hub link), or take it away."""
        self._publisher = publisher
        self._wake.set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake.set()  # a first look at what waits from before
        self.spawn(self._drain(), "drain")

    async def stop(self) -> None:
        await self.cancel_tasks()
        self._loop = None
        await asyncio.to_thread(self.close)

    async def _drain(self) -> None:
        while True:
            resend = await self._run(self._next_resend) if self._publisher is not None else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), resend)
            self._wake.clear()
            while self._publisher is not None:
                row = await self._run(self._next_due)
                if row is None:
                    break
                try:
                    await self._publisher(row["payload"].encode())
                except LinkError:
                    await asyncio.sleep(self.retry_s)
                    continue
                await self._run(self._mark_sent, row["seq"])
                log.debug("event sent", extra={"seq": row["seq"]})

    def _next_due(self) -> sqlite3.Row | None:
        """The oldest event never sent, or sent ``resend_s`` ago and still unacknowledged."""
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT seq, payload FROM outbox WHERE sent_at IS NULL OR sent_at <= ?"
            " ORDER BY seq LIMIT 1",
            (time.time() - self.resend_s,),
        ).fetchone()
        return row

    def _mark_sent(self, seq: int) -> None:
        with self._conn:
            self._conn.execute("UPDATE outbox SET sent_at = ? WHERE seq = ?", (time.time(), seq))

    def _next_resend(self) -> float | None:
        """Seconds until the oldest unacknowledged event is due again; None when none is."""
        row = self._conn.execute("SELECT MIN(sent_at) FROM outbox").fetchone()
        if row[0] is None:
            return None
        return max(0.0, row[0] + self.resend_s - time.time())
