"""systemd's notify protocol (sd_notify): READY, STATUS, STOPPING and the watchdog ping."""

import asyncio
import os
import socket

from appliance.service import TaskGroupService


def notify(message: str) -> bool:
    """Send one datagram to $NOTIFY_SOCKET; a no-op (False) when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Watchdog(TaskGroupService):
    """Pings the watchdog from the event loop, so a blocked loop gets the daemon restarted."""

    name = "watchdog"

    async def start(self) -> None:
        interval = watchdog_interval()
        if interval:
            self.spawn(self._ping(interval), "ping")

    async def _ping(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        notify("STOPPING=1")
        await self.cancel_tasks()
