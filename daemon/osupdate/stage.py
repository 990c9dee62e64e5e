"""Stage a fetched OS version into the inactive A/B slot with the real systemd-sysupdate.

The transfer definitions ship in the image (``/usr/lib/sysupdate.d/*.conf``, docs/IMAGE.md):
the root image goes to the root partition that is not running (``ProtectVersion=%A``), the UKI
to the ESP with boot counting. Their source is ``url-file`` at ``file:///var/lib/spoke/os/
source``: the directory ``fetch_os`` filled, verified through TUF beforehand, which is why
sysupdate runs with ``--verify=no`` (there is no GPG signature; TUF's signatures are stronger).

The daemon runs unprivileged, so on the appliance it asks: ``request_stage`` writes the version
to ``STATE/os/stage-request``; ``spoke-os-stage.path`` starts ``spoke-os-stage.service`` (root,
``/usr/lib/spoke/os-stage``), which runs the same sysupdate command and answers in
``STATE/os/stage-result``. As root (tests, a manual run) ``stage`` runs it directly.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from appliance.fsutil import atomic_write
from daemon.delivery.errors import DeliveryInterrupted, ModelRefused

SYSUPDATE = Path("/usr/lib/systemd/systemd-sysupdate")


def sysupdate_command(version: str, image: Path | None = None, root: Path | None = None,
                      tool: Path = SYSUPDATE) -> list[str]:
    cmd = [str(tool), "--verify=no", "--no-pager"]
    if image is not None:
        cmd.append(f"--image={image}")
    if root is not None:
        cmd.append(f"--root={root}")
    return [*cmd, "update", version]


def stage(version: str, image: Path | None = None, root: Path | None = None,
          timeout_s: float = 1800, env: dict[str, str] | None = None) -> None:
    """Run ``systemd-sysupdate update VERSION`` (on the running system, or on ``image``/``root``
    for tests and offline staging). A failure is a ``ModelRefused("stage-failed")`` with
    sysupdate's last words; sysupdate itself never writes the slot that is running."""
    if not SYSUPDATE.exists():
        raise ModelRefused("stage-failed", f"{SYSUPDATE} is missing (systemd >= 251 needed)")
    try:
        proc = subprocess.run(sysupdate_command(version, image, root), capture_output=True,
                              text=True, timeout=timeout_s, env=os.environ | (env or {}))
    except subprocess.TimeoutExpired as exc:
        raise ModelRefused("stage-failed", f"systemd-sysupdate took over {timeout_s:.0f} s") \
            from exc
    if proc.returncode != 0:
        words = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
        raise ModelRefused("stage-failed", f"systemd-sysupdate update {version} exited "
                           f"{proc.returncode}: {' / '.join(words) or 'no output'}")


def request_stage(state_dir: Path, version: str, timeout_s: float = 3600,
                  poll_s: float = 1.0) -> None:
    """Ask the root staging unit for ``version`` and wait for its answer."""
    folder = state_dir / "os"
    result = folder / "stage-result"
    result.unlink(missing_ok=True)
    atomic_write(folder / "stage-request", f"{version}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = result.read_text().strip()
        except FileNotFoundError:
            time.sleep(poll_s)
            continue
        result.unlink(missing_ok=True)
        if answer == f"ok {version}":
            return
        raise ModelRefused("stage-failed", f"spoke-os-stage: {answer}")
    (folder / "stage-request").unlink(missing_ok=True)
    raise DeliveryInterrupted("stage-timeout", f"spoke-os-stage.service did not answer within "
                              f"{timeout_s:.0f} s")
