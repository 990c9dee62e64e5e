"""Service lifecycle: every long-lived part has ``start()``/``stop()``; one supervisor runs them.

The supervisor starts services in dependency order and stops them in reverse, each stop with a
timeout that logs what is still running (Home Assistant's staged shutdown).
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from appliance.errors import SpokeError

log = logging.getLogger(__name__)

#: A service's "what I report has changed" hook, given to it at construction (the daemon then
#: publishes the reported state to the hub, when it has a link).
Notify = Callable[[], Awaitable[None]]


async def unheard() -> None:
    """The ``Notify`` of a service nobody listens to (tests, ``--standalone``)."""


async def tell(notify: Notify) -> None:
    """Run a change hook: a link that fails (``SpokeError``) is the link's business, never a
    reason for the service that changed to fail."""
    with contextlib.suppress(SpokeError):
        await notify()


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Supervisor:
    """Starts services in order, watches their background tasks, stops them in reverse.

    It watches a ``TaskGroupService`` by waiting on its ``crashed`` event: a service never
    needs to be told where to report a crash, so none is given a callback after it is built."""

    def __init__(self, stop_timeout: float = 10.0) -> None:
        self.stop_timeout = stop_timeout
        self._stack = contextlib.AsyncExitStack()
        self._started: list[str] = []
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    async def add(self, service: Service) -> None:
        await service.start()
        self._started.append(service.name)
        self._stack.push_async_callback(self._stop_one, service)
        if isinstance(service, TaskGroupService):
            self._watchers[id(service)] = asyncio.create_task(
                self._watch(service), name=f"supervisor:{service.name}")
        log.info("service started", extra={"service": service.name})

    async def _watch(self, service: "TaskGroupService") -> None:
        await service.crashed.wait()
        if service.crash is not None:
            self.report_failure(service.crash)

    async def _stop_one(self, service: Service) -> None:
        watcher = self._watchers.pop(id(service), None)
        if watcher is not None:
            watcher.cancel()
        try:
            await asyncio.wait_for(service.stop(), self.stop_timeout)
            log.info("service stopped", extra={"service": service.name})
        except TimeoutError:
            log.error(
                "service did not stop in time",
                extra={"service": service.name, "timeout_s": self.stop_timeout,
                       "still_running": still_running()},
            )
        except Exception:
            log.exception("service failed while stopping", extra={"service": service.name})

    def report_failure(self, exc: BaseException) -> None:
        """A background task of a service died: the whole process stops (systemd restarts it)."""
        if self.failure is None:
            self.failure = exc
        self.failed.set()

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> "Supervisor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def still_running() -> list[str]:
    """Names of the tasks not yet done, besides the caller's (what a stuck stop waits on)."""
    me = asyncio.current_task()
    return sorted(t.get_name() for t in asyncio.all_tasks() if t is not me and not t.done())


class TaskGroupService:
    """Base for a service made of background coroutines. The first crash of one is kept in
    ``crash`` and sets ``crashed``, which whoever runs the service (the ``Supervisor``, a
    ``Singleton``) waits on."""

    name = "service"

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.crash: BaseException | None = None
        self.crashed = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        task.add_done_callback(self._done)
        self._tasks.append(task)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task crashed", exc_info=exc, extra={"task": task.get_name()})
            if self.crash is None:
                self.crash = exc
                self.crashed.set()

    async def cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()


async def run_until_signal(
    main: Callable[[asyncio.Event], Awaitable[int]],
) -> int:
    """Run ``main(stop_event)``; SIGTERM and SIGINT set the event so main can shut down cleanly."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await main(stop)
