"""What software this appliance runs (Spoke, the OS, the kernel) and when that changed.

The reported state carries the versions now; an ``software_updated`` event (through the
durable outbox) records each change, so the hub's device page can show the history. The last
versions seen are kept in the state directory, so a change is told once, on the first start
after it (an image update, an upgraded package).
"""

import platform
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from appliance import __version__
from appliance.fsutil import atomic_write

OS_RELEASE = Path("/etc/os-release")


class SystemVersions(BaseModel):
    model_config = ConfigDict(frozen=True)

    spoke: str
    os: str | None
    kernel: str


def os_name(os_release: Path = OS_RELEASE) -> str | None:
    """``PRETTY_NAME`` from os-release (e.g. "Debian GNU/Linux 12 (bookworm)"), or None."""
    try:
        lines = os_release.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "PRETTY_NAME":
            return value.strip().strip("\"'") or None
    return None


def current(os_release: Path = OS_RELEASE) -> SystemVersions:
    return SystemVersions(spoke=__version__, os=os_name(os_release), kernel=platform.release())


def changed_since_last_start(path: Path, now: SystemVersions) -> dict[str, object] | None:
    """The event data when ``now`` differs from the versions stored at ``path`` (``from`` is
    None on the first start, or when the stored file is unreadable), else None. Stores ``now``.
    """
    try:
        before: SystemVersions | None = SystemVersions.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        before = None
    if before == now:
        return None
    atomic_write(path, now.model_dump_json())
    return {
        "from": before.model_dump(mode="json") if before else None,
        "to": now.model_dump(mode="json"),
    }
