"""The durable outbox keeps an event until the hub says it is stored, not merely until the
broker acknowledged it (a broker killed -9 forgets what it acknowledged)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from appliance.errors import LinkError
from daemon.hub.outbox import Outbox
from tests.support.tmpfs import tmpfs


class Link:
    """What the hub link gives the outbox: a publish coroutine, up or down."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[str] = []

    async def publish(self, payload: bytes) -> None:
        if not self.up:
            raise LinkError("the hub link is down")
        self.sent.append(json.loads(payload)["id"])


async def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_sent_event_stays_until_the_hub_acknowledges_it(tmp_path: Path) -> None:
    outbox, link = Outbox(tmp_path / "outbox.db", resend_s=60), Link()
    outbox.attach(link.publish)
    await outbox.start()
    try:
        first, second = outbox.put("detection", {"n": 1}), outbox.put("detection", {"n": 2})
        await wait_until(lambda: link.sent == [first, second])
        assert outbox.depth() == 2  # PUBACKed by the broker, not yet stored at the hub
        assert await outbox.ack([first, "never-sent"]) == 1
        assert [e.id for e in outbox.pending()] == [second]
        await outbox.ack([second])
        assert outbox.depth() == 0
    finally:
        await outbox.stop()


async def test_an_unacknowledged_event_is_sent_again_after_resend_s(tmp_path: Path) -> None:
    outbox, link = Outbox(tmp_path / "outbox.db", resend_s=0.3), Link()
    outbox.attach(link.publish)
    await outbox.start()
    try:
        event = outbox.put("detection", {"n": 1})
        await wait_until(lambda: link.sent.count(event) >= 2)
        await outbox.ack([event])
        sent = len(link.sent)
        await asyncio.sleep(0.8)
        assert len(link.sent) == sent  # acknowledged: never sent again
    finally:
        await outbox.stop()


async def test_nothing_is_sent_while_the_link_is_away_and_all_of_it_after(tmp_path: Path) -> None:
    outbox, link = Outbox(tmp_path / "outbox.db", resend_s=0.2, retry_s=0.05), Link()
    await outbox.start()
    try:
        ids = [outbox.put("detection", {"n": n}) for n in range(3)]
        await asyncio.sleep(0.5)  # no publisher yet: the drain waits instead of spinning
        assert link.sent == []
        link.up = False
        outbox.attach(link.publish)
        await asyncio.sleep(0.3)
        link.up = True
        await wait_until(lambda: set(ids) <= set(link.sent))
        assert link.sent[:3] == ids  # oldest first
    finally:
        await outbox.stop()


def test_an_outbox_written_before_acknowledgements_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                             kind TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL);
        INSERT INTO outbox (id, kind, payload, created_at) VALUES ('old-1', 'detection',
            '{"id": "old-1", "kind": "detection", "ts": 1.0, "data": {}}', 1.0);
    """)
    old.close()
    outbox = Outbox(path)
    try:
        assert [e.id for e in outbox.pending()] == ["old-1"]
        outbox.put("detection", {"n": 1})
        assert len(outbox.pending()) == 2
    finally:
        outbox.close()


async def test_a_full_outbox_drops_the_oldest_and_says_how_many(tmp_path: Path) -> None:
    dropped: list[int] = []
    outbox = Outbox(tmp_path / "outbox.db", max_events=3, on_drop=dropped.append)
    ids = [outbox.put("note", {"n": n}) for n in range(5)]
    assert [e.id for e in outbox.pending()] == ids[2:]
    assert dropped == [1, 1] and outbox.dropped() == 2
    outbox.close()


async def test_a_locked_database_stops_the_outbox_not_the_event_loop(tmp_path: Path) -> None:
    """Another writer holds the database's write lock, as a slow disk would hold a write:
    ``put`` returns at once and the loop goes on running while ``add`` waits; once the lock
    is let go both events are stored, in the order they were asked for."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, until ROLLBACK
    try:
        first = outbox.put("detection", {"n": 1})
        second = asyncio.create_task(outbox.add("detection", {"n": 2}))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    try:
        assert [e.id for e in outbox.pending()] == [first, await second]
        assert outbox.depth() == 2
    finally:
        outbox.close()


async def test_a_write_that_fails_is_logged_raised_to_add_and_loses_nothing_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk under the outbox (a real 256 KiB tmpfs): the failed write of ``put`` is
    logged with the event's id, ``add`` raises its own, and what was stored before stays."""
    with tmpfs(tmp_path / "state", "256k") as root:
        outbox = Outbox(root / "outbox.db")
        try:
            kept = await outbox.add("detection", {"n": 0})
            too_big = {"blob": "x" * 400_000}
            lost = outbox.put("detection", too_big)
            with pytest.raises(sqlite3.OperationalError, match="full"):
                await outbox.add("detection", too_big)
            logged = [r for r in caplog.records if r.getMessage() == "an event could not be stored"]
            assert [r.__dict__["event"] for r in logged] == [lost]
            assert [e.id for e in outbox.pending()] == [kept]
        finally:
            outbox.close()
