"""One OS update step as the reconciler runs it: fetch and verify, then stage."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from appliance.osupdate import DesiredOs, OsManifest
from daemon.delivery.fetch import RangeFetcher
from daemon.delivery.tufclient import TufClient
from daemon.osupdate.fetch import fetch_os
from daemon.osupdate.stage import request_stage, stage


def source_dir(state_dir: Path) -> Path:
    """Where the transfer definitions read from (``file:///var/lib/spoke/os/source``)."""
    return state_dir / "os" / "source"


def fetch_and_stage(
    client: TufClient,
    fetcher: RangeFetcher,
    desired: DesiredOs,
    state_dir: Path,
    deadline: float,
    image: Path | None = None,
    root: Path | None = None,
    architecture: str | None = None,
    env: dict[str, str] | None = None,
    privileged: bool | None = None,
) -> OsManifest:
    """Bring ``desired`` into the inactive slot; any refusal happens before sysupdate runs.
    Unprivileged (the daemon on the appliance), the root staging unit runs sysupdate.
    The source is removed once sysupdate ran (a root image is gigabytes on the data partition,
    which must hold the next version's download too); a failed stage downloads it again."""
    manifest = fetch_os(client, fetcher, desired, state_dir / "os" / "partial",
                        source_dir(state_dir), deadline, architecture)
    try:
        if privileged if privileged is not None else os.geteuid() == 0:
            stage(manifest.version, image=image, root=root, env=env)
        else:
            request_stage(state_dir, manifest.version, max(60.0, deadline - time.monotonic()))
    finally:
        shutil.rmtree(source_dir(state_dir), ignore_errors=True)
    return manifest
