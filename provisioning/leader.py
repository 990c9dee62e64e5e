"""Singleton work under a lock: exactly one hub process at a time runs it, and it moves when
that process dies.

On PostgreSQL the lock is a session-level advisory lock held on a connection of its own:
when the holder dies, its connection closes and the database releases the lock, so another
process takes it on its next try. On SQLite (one host) it is an exclusive ``flock`` on a file
beside the database, which the kernel releases the same way.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from appliance.service import Service, TaskGroupService

log = logging.getLogger(__name__)

#: Advisory-lock key of the hub's singleton work (the migration lock is another).
SINGLETON_LOCK = 0x5B0CE002
RETRY_S = 2.0


class Lock(Protocol):
    def try_acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class AdvisoryLock:
    """``pg_try_advisory_lock`` on a dedicated connection; lost when that connection is."""

    def __init__(self, engine: Engine, key: int = SINGLETON_LOCK) -> None:
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        conn = self.engine.connect()
        got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(self.key))).scalar())
        conn.commit()
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.select(1)).scalar()
            self._conn.commit()
        except sa.exc.DBAPIError:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                # Unlocked first: the server ends a closed session's backend a moment later,
                # and whoever tries next must not find the lock still held.
                self._conn.execute(sa.select(sa.func.pg_advisory_unlock(self.key)))
                self._conn.commit()
            with contextlib.suppress(sa.exc.DBAPIError):
                # Closed, not returned to the pool: the session ends (were the unlock lost).
                self._conn.invalidate()
                self._conn.close()
            self._conn = None


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        f = self.path.open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def lock_for(engine: Engine) -> Lock:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    return FileLock(Path(f"{engine.url.database}.singleton.lock"))


def instance_lock(engine: Engine, instance: str) -> Lock:
    """The lock a named hub process holds while it lives: whoever else gets it knows that
    process is gone (provisioning.sessions), and a second process of the same name waits."""
    if engine.dialect.name == "postgresql":
        digest = hashlib.sha256(f"spoke-hub instance {instance}".encode()).digest()
        return AdvisoryLock(engine, int.from_bytes(digest[:8], "big", signed=True))
    return FileLock(Path(f"{engine.url.database}.{instance}.lock"))


class Singleton(TaskGroupService):
    """Runs the services ``make`` builds only while this process holds ``lock``; a crash of
    one of them is this service's crash (its supervisor stops the process)."""

    name = "singleton"

    def __init__(
        self, lock: Lock, make: Callable[[], list[Service]], retry_s: float = RETRY_S
    ) -> None:
        super().__init__()
        self.lock = lock
        self.make = make
        self.retry_s = retry_s
        self.leading = asyncio.Event()
        self._running: list[Service] = []
        self._relays: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.spawn(self._run(), "lead")

    async def stop(self) -> None:
        await self.cancel_tasks()
        await self._step_down()

    async def _run(self) -> None:
        while True:
            if not self.leading.is_set() and await asyncio.to_thread(self.lock.try_acquire):
                log.info("this hub process now runs the singleton work")
                self.leading.set()
                for service in self.make():
                    await service.start()
                    self._running.append(service)
                    if isinstance(service, TaskGroupService):
                        self._relays.append(self.spawn(self._relay(service), service.name))
            elif self.leading.is_set() and not await asyncio.to_thread(self.lock.held):
                log.error("lost the singleton lock; stopping the singleton work")
                await self._step_down()
            await asyncio.sleep(self.retry_s)

    @staticmethod
    async def _relay(service: TaskGroupService) -> None:
        await service.crashed.wait()
        if service.crash is not None:
            raise service.crash

    async def _step_down(self) -> None:
        for relay in self._relays:
            relay.cancel()
        self._relays.clear()
        for service in reversed(self._running):
            await service.stop()
        self._running.clear()
        self.leading.clear()
        await asyncio.to_thread(self.lock.release)
