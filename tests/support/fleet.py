"""Fleet control: real hubs and appliances, each a subprocess, talking TLS to a real mosquitto.

The one place that spawns and polls them: tests, benchmarks, the fault suite and its soak
(tests/faults/harness.py, scripts/soak.py) and ``make demo`` (scripts/demo.py) start, stop,
kill and poll hubs and appliances through these classes. An appliance may run inside a network
namespace (``tests.support.netns.Link``) so that its link to the hub can be cut and degraded;
``Appliance.api`` follows whichever scheme (HTTP or HTTPS) its API serves.
"""

import contextlib
import errno
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from tests.support.wait import wait_for

if TYPE_CHECKING:
    from tests.support.netns import Link

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

FAST_DAEMON_ENV = {
    "SPOKE_HUB__BACKOFF_INITIAL_S": "0.2",
    "SPOKE_HUB__BACKOFF_CAP_S": "2",
    "SPOKE_HEALTH__INTERVAL_S": "1",
    "SPOKE_HUB__ENROLL_TIMEOUT_S": "5",
    "SPOKE_HUB__CONNECT_TIMEOUT_S": "5",
    # File keys unless a test asks for the TPM (tests/provisioning/test_tpm_keys.py), so the
    # suite does not depend on whether the host has a TPM.
    "SPOKE_HUB__KEY_STORE": "file",
}


def free_port() -> int:
    """A port free on IPv4 and on IPv6 loopback: clients given "localhost" try ::1 first, so a
    port taken there by another process would reach that process instead of ours (a hub's
    repository then answered with garbage: BadStatusLine in tests/finetune/test_fleet.py)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # no IPv6 here: nothing can listen there
                return port
            continue
        return port


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOKE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


class CommandFailed(AssertionError):
    """A ``spoke`` or ``spoke-hub`` command exited non-zero (its stderr is in the message)."""


def cli(tool: str, *args: str, check: bool = True, timeout: float | None = 120,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``spoke`` or ``spoke-hub`` to completion and return its output. ``timeout``: None
    for a command that takes as long as it takes (the demo's ``spoke finetune start --wait``
    on a loaded machine)."""
    module = {"spoke": "daemon", "spoke-hub": "provisioning"}[tool]
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=_env(kw.pop("env", None)),
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _any_certificate() -> ssl.SSLContext:
    """TLS without verifying the API's certificate: these calls test availability and data,
    not the API's identity (the identity tests check that)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Process:
    """A long-running subprocess whose output goes to a log file we can read and show."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, env=_env(env), cwd=REPO
        )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 20.0) -> int:
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()
        self._out.close()

    def kill_tree(self) -> int:
        """A power cut: SIGKILL to the process and every descendant at once (no cleanup runs);
        returns how many processes were killed."""
        try:
            procs = [psutil.Process(self.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10)
        self._out.close()
        return len(procs)


class Managed:
    """What a hub and an appliance share: one long-running ``Process`` (or none), stopped or
    killed at will and started again by the subclass's ``start``."""

    process: Process | None = None

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s); the exit code."""
        code = self.process.terminate() if self.process else 0
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL to the main process alone: a hub's managed broker is left as an orphan."""
        if self.process:
            self.process.kill()
        self.process = None


class Hub(Managed):
    def __init__(self, root: Path, public_host: str = "localhost",
                 bind_host: str | None = None) -> None:
        """``bind_host``: listen only there (the fault suite's private address), not 0.0.0.0.
        ``created`` is what ``spoke-hub init`` printed."""
        self.home = root / "hub"
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.process = None
        self.starts = 0
        self._operator_token: str | None = None
        self.env = {"SPOKE_HUB_HUB__BIND_HOST": bind_host} if bind_host else {}
        self.created = self.run("init", "--public-host", public_host, "--mqtt-port",
                                str(self.mqtt_port), "--http-port", str(self.http_port))
        self.trust_key = root / "trust.pub"
        self.trust_key.write_text(self.run("bundle", "pubkey"))

    def run(self, *args: str) -> str:
        """``spoke-hub ARGS --home HOME`` to completion: its standard output."""
        return cli("spoke-hub", *args, "--home", str(self.home)).stdout

    def start(self, env: dict[str, str] | None = None) -> "Hub":
        """``env``: config overrides, e.g. ``SPOKE_HUB_ENROLLMENT__DEVICE_CERT_DAYS``."""
        self.process = Process(
            [sys.executable, "-m", "provisioning", "serve", "--home", str(self.home)],
            self.home / f"serve-{self.starts}.log",
            env=self.env | (env or {}),
        )
        self.starts += 1
        wait_for(lambda: "hub connected to broker" in self.process.output(), 180, "hub to connect")  # type: ignore[union-attr]
        return self

    def bundle(self, out: Path, *extra: str, labels: str = "site=bridge-17,region=north") -> Path:
        """A signed provisioning bundle at ``out`` (``extra``: e.g. ``--max-uses 5``)."""
        self.run("bundle", "create", "--labels", labels, "--out", str(out), *extra)
        return out

    def operator_token(self) -> str:
        """An operator token for the hub's HTTPS API (created on first use)."""
        if self._operator_token is None:
            self._operator_token = self.run("tokens", "create", "--name", "tests").strip()
        return self._operator_token

    def claim_ids(self) -> list[str]:
        return [c["claim"] for c in json.loads(self.run("bundle", "list", "--json"))]

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in json.loads(self.run("devices", "--json"))}

    def availability(self, device_id: str) -> str | None:
        """What the hub's registry says now (read in-process: cheaper than ``devices``)."""
        from provisioning.registry import Registry

        registry = Registry(self.home / "registry.db")
        try:
            device = registry.device(device_id)
            return device.as_dict()["availability"] if device else None
        finally:
            registry.close()

    def wait_availability(self, device_id: str, value: str, timeout: float = 40) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            d = self.devices().get(device_id)
            return d if d and d["availability"] == value else None

        return wait_for(check, timeout, f"{device_id} to be {value} at the hub")

    def broker_pid(self) -> int:
        return int((self.home / "run" / "mosquitto.pid").read_text())

    def enrollments_in_log(self) -> int:
        """Enrollments answered since this hub process started."""
        return self.process.output().count("device enrolled") if self.process else 0

    # --- model delivery -------------------------------------------------------------------

    def publish(self, artifact: Path) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run("models", "publish", str(artifact), "--json"))
        return result

    def apply_policy(self, text: str) -> str:
        """Apply a placement policy; returns what ``spoke-hub policy apply`` printed."""
        path = self.home / "policy-input.toml"
        path.write_text(text)
        return self.run("policy", "apply", str(path))

    def target_file(self, row: dict[str, Any]) -> Path:
        """The served file of a published target (what an attacker on the hub would edit)."""
        dirname, _, base = str(row["target"]).rpartition("/")
        return self.home / "repository" / "public" / "targets" / dirname / (
            f"{row['sha256']}.{base}"
        )

    def device_model(self, device_id: str) -> dict[str, Any]:
        """The model part of the device's reported state, as the hub stored it."""
        state = self.devices().get(device_id, {}).get("state") or {}
        model: dict[str, Any] = state.get("model") or {}
        return model

    def wait_model(self, device_id: str, version: str, state: str = "committed",
                   timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            m = self.device_model(device_id)
            return m if (m.get("version"), m.get("state")) == (version, state) else None

        return wait_for(check, timeout, f"{device_id} to report {version} {state}")

    def events(self, device_id: str, kind: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        from provisioning.registry import Registry

        registry = Registry(self.home / "registry.db")
        try:
            return registry.events(device_id, kind, limit)
        finally:
            registry.close()


class Appliance(Managed):
    def __init__(self, root: Path, hub: Hub, name: str = "appliance",
                 link: "Link | None" = None, base_env: dict[str, str] | None = None) -> None:
        """``link``: run inside that network namespace, its API on the namespace's address.
        ``base_env``: config every start gets (default ``FAST_DAEMON_ENV``: quick retries for
        tests; the demo runs with the defaults)."""
        self.state_dir = root / name
        self.hub = hub
        self.link = link
        self.base_env = FAST_DAEMON_ENV if base_env is None else base_env
        self.api_host = link.addr if link else "127.0.0.1"
        self.api_port = free_port()
        self.process = None
        self._scheme: str | None = None

    def start(
        self,
        bundle: Path | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> "Appliance":
        """``args``: extra ``spoke run`` arguments, e.g. ``["--model", DIR]``."""
        argv = [
            *(self.link.prefix() if self.link else []),
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--state-dir",
            str(self.state_dir),
            "--trust-key",
            str(self.hub.trust_key),
            "--boot-dir",
            str(self.state_dir.parent / "no-boot"),
        ]
        if bundle is not None:
            argv += ["--bundle", str(bundle)]
        argv += args or []
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            argv,
            self.state_dir.parent / f"{self.state_dir.name}.log",
            env=self.base_env
            | {"SPOKE_API__LISTEN": f"{self.api_host}:{self.api_port}"}
            | (env or {}),
        )
        return self

    def scheme(self) -> str | None:
        """``https`` if the API completes a TLS handshake, ``http`` if it answers without one,
        None while nothing listens. Remembered once known."""
        if self._scheme is None:
            try:
                with socket.create_connection((self.api_host, self.api_port), timeout=5) as raw:
                    try:
                        with _any_certificate().wrap_socket(raw):
                            self._scheme = "https"
                    except (ssl.SSLError, ConnectionResetError):
                        self._scheme = "http"
            except OSError:
                return None
        return self._scheme

    def api(self, path: str, token: str | None = None, data: bytes | None = None,
            content_type: str = "image/png", timeout: float = 10) -> tuple[int, Any]:
        """One API call: (status, parsed JSON body); (0, None) when the API cannot be reached."""
        scheme = self.scheme()
        if scheme is None:
            return 0, None
        headers = {"Content-Type": content_type} if data is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"{scheme}://{self.api_host}:{self.api_port}{path}",
                                     data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=_any_certificate()) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except ValueError:
                return exc.code, body.decode(errors="replace")
        except (OSError, ValueError):
            return 0, None

    def run(self, *args: str) -> str:
        """``spoke ARGS --state-dir STATE`` to completion: its standard output."""
        return cli("spoke", *args, "--state-dir", str(self.state_dir)).stdout

    def query(self, database: str, sql: str) -> list[sqlite3.Row]:
        """Rows from one of the appliance's SQLite files (``uplink/results.db``, ``outbox.db``),
        read-only, so it works while the daemon is down or busy; [] before the file exists."""
        path = self.state_dir / database
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run("status", "--json"))
        return result

    def wait_enrolled(self, timeout: float = 60) -> str:
        def check() -> str | None:
            s = self.status()
            return s["device_id"] if s["hub"].get("connected") else None

        return wait_for(check, timeout, f"{self.state_dir.name} to enroll and connect")

    def wait_provisioning(self, state: str, timeout: float = 20) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            p = self.status()["provisioning"]
            return p if p["state"] == state else None

        return wait_for(check, timeout, f"provisioning state {state}")

    def power_cut(self) -> int:
        """kill -9 of the daemon and all its workers at once; returns how many died."""
        killed = self.process.kill_tree() if self.process else 0
        self.process = None
        return killed

    def models(self) -> dict[str, Any]:
        """``spoke models list --json``: the store, the active model, the last refusal."""
        result: dict[str, Any] = json.loads(self.run("models", "list", "--json"))
        return result
