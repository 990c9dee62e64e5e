"""``spoke health-gate``: may this boot be marked good? Run by ``spoke-health.service``, which
``boot-complete.target`` requires: when it fails, systemd-bless-boot does not bless the new
boot entry, its tries run out, and systemd-boot falls back to the previous slot by itself.

It passes only when all of these hold: the daemon is READY (its pid is alive and it wrote its
API port, which it does right before ``READY=1``), the identity loads, the hub is connected or
was within ``[os] hub_grace_s``, and the active model serves (``/readyz`` on the daemon's own
API says ready). The verdict goes to ``STATE/os/health.json``: after a fallback the daemon
reports it as the rollback's reason.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from appliance.cli import print_json
from appliance.config import DaemonConfig, load_config
from appliance.fsutil import atomic_write
from daemon.commands.run import ENV_PREFIX, add_state_dir
from daemon.state import StateDir, daemon_running, load_identity, read_status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health-gate", help="pass only if this boot is healthy (spoke-health)")
    add_state_dir(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep checking this long before failing (the daemon may still start)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    checked_at: float


def _readyz(port: int) -> dict[str, Any] | None:
    # Loopback only, and nothing secret is sent or trusted beyond "is a model serving": the
    # API's certificate (self-signed or hub-issued) is not checked for this probe.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for scheme in ("https", "http"):
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/readyz", timeout=5,
                                        context=insecure if scheme == "https" else None) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read() or b"{}"))
        except (OSError, ValueError):
            continue
    return None


def check(state: StateDir, grace_s: float, now: float | None = None) -> Verdict:
    """The first failing condition, or a pass."""
    now = time.time() if now is None else now
    status = read_status(state)
    port = (status.get("api") or {}).get("port")
    if not daemon_running(status) or not port:
        return Verdict(False, "the daemon is not READY", now)
    if load_identity(state) is None:
        return Verdict(False, "the device identity does not load", now)
    hub = status.get("hub") or {}
    last = hub.get("last_contact")
    if not hub.get("connected") and (last is None or now - last > grace_s):
        # status.json starts every daemon run with no contact: None means not once this run.
        what = ("hub not reached since the daemon started" if last is None
                else f"hub unreachable for {now - last:.0f} s")
        return Verdict(False, f"{what} (grace {grace_s:.0f} s)", now)
    ready = _readyz(int(port))
    if ready is None:
        return Verdict(False, "the daemon's API does not answer", now)
    if ready.get("status") != "ready":
        return Verdict(False, f"no model serves: {ready.get('reason') or 'not ready'}", now)
    model = ready.get("model") or {}
    return Verdict(True, f"healthy: {model.get('name')}@{model.get('version')} serves", now)


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    grace = load_config(DaemonConfig, state.config, ENV_PREFIX).os.hub_grace_s
    deadline = time.monotonic() + args.wait
    while True:
        verdict = check(state, grace)
        if verdict.ok or time.monotonic() >= deadline:
            break
        time.sleep(2)
    atomic_write(state.root / "os" / "health.json", json.dumps(asdict(verdict)))
    if args.json:
        print_json(asdict(verdict))
    else:
        print(f"spoke-health: {'pass' if verdict.ok else 'FAIL'}: {verdict.reason}")
    return 0 if verdict.ok else 1
