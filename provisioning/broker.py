"""The managed mosquitto: its config and ACL written from the registry, run as a supervised child.

The broker enforces identity: a client's certificate common name is its username, and the ACL
lets a device write only its own topics and read only its own ``desired``, ``cmd`` and event
acknowledgements. Device
rules are ``%u`` patterns, so enrolling a device changes neither ACL nor CRL; a bundle (its
claim) or a revocation rewrites them, and mosquitto re-reads them on SIGHUP without a restart.
The hub's own reading rights are a pattern as well, so that a reload cannot take them from a hub
session that is away (write_access).
"""

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
from pathlib import Path

import psutil
from cryptography import x509

from appliance import topics
from appliance.config import HubConfig
from appliance.errors import ConfigError, LinkError
from appliance.fsutil import atomic_write
from appliance.service import TaskGroupService
from provisioning import ca
from provisioning.home import HUB_COMMON_NAME, HubHome
from provisioning.registry import Registry

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 1024 * 1024
RESTART_DELAY_S = 1.0
MAX_QUEUED_MESSAGES = 1_000_000


# Valid ids that stand for ``%u`` and ``+`` while topics.py builds each topic.
_SLOT, _ANY = "DEVICE0SLOT", "ANY0SLOT"


def device_rules() -> list[str]:
    """What one device may do, keyed on its username (the certificate CN): the same lines for
    every device, so a broker that knows ``%u`` patterns holds them once for the whole fleet."""
    rules = [
        ("write", topics.available(_SLOT)),
        ("write", topics.state(_SLOT)),
        ("write", topics.health(_SLOT)),
        ("write", topics.events(_SLOT)),
        ("write", topics.command_result(_SLOT, _ANY)),
        ("write", topics.renew_request(_SLOT)),
        ("read", topics.renew_response(_SLOT)),
        ("read", topics.events_ack(_SLOT)),
        ("read", topics.desired(_SLOT)),
        ("read", topics.command(_SLOT, _ANY)),
    ]
    return [f"{access} {t.replace(_SLOT, '%u').replace(_ANY, '+')}" for access, t in rules]


def render_acl(registry: Registry) -> str:
    """The mosquitto ACL: constant in the number of devices (one line per bundle's claim).

    A revoked device keeps matching the patterns, but its certificate is on the CRL, so it
    cannot connect, and the broker's session takeover closes a session it already had.
    """
    root = topics.ROOT
    lines = [
        "# Written by spoke-hub from its registry; edits are overwritten.",
        "# Any client may read the enrollment response addressed to its own client id.",
        f"pattern read {root}/enroll/%c/response",
        "# Each device its own topics, by certificate common name (= MQTT username).",
        *(f"pattern {rule}" for rule in device_rules()),
        "# The hub reads the fleet's traffic through a pattern too: its username is the topic",
        f"# root ({HUB_COMMON_NAME}), so this is {root}/# for the hub and, for anyone else, a",
        "# tree nobody may write. A `user` block's rights are lost by a session that is away",
        "# when the broker reloads (see write_access); a pattern's are not.",
        "pattern read %u/#",
        "",
        f"user {HUB_COMMON_NAME}",
        f"topic readwrite {root}/#",
        "",
    ]
    # A revoked claim keeps its line, so its holder still hears why (claim-revoked).
    for claim in registry.claims():
        lines += [f"user claim-{claim.id}", f"topic write {topics.ENROLL_REQUEST}", ""]
    return "\n".join(lines)


def render_config(home: HubHome, config: HubConfig) -> str:
    b = home.broker_dir
    return "\n".join(
        [
            "# Written by spoke-hub serve; edits are overwritten.",
            # Run as the hub's own user: the broker reads the hub's 0600 keys.
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"acl_file {b / 'acl'}",
            "persistence true",
            f"persistence_location {b}/",
            "autosave_interval 30",
            # The hub's persistent session holds what devices send while the hub is away.
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_packet_size {MAX_PACKET_BYTES}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # "Reloading config." and the autosaves: when the hub made the broker re-read them.
            "log_type information",
            "connection_messages true",
            "",
            f"listener {config.hub.mqtt_port} {config.hub.bind_host}",
            "protocol mqtt",
            f"cafile {home.ca_cert}",
            f"certfile {home.server_cert}",
            f"keyfile {home.server_key}",
            f"crlfile {home.crl}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
            "",
        ]
    )


Access = tuple[list[int], str]


def wanted_access(registry: Registry) -> Access:
    """The revoked serials and the ACL text the registry asks for."""
    return sorted(registry.revoked_serials()), render_acl(registry)


def access_on_disk(home: HubHome) -> Access | None:
    """The revoked serials and ACL text the broker was last given, or None if unreadable."""
    try:
        crl = x509.load_pem_x509_crl(home.crl.read_bytes())
        acl = (home.broker_dir / "acl").read_text()
    except (OSError, ValueError):
        return None
    return sorted(r.serial_number for r in crl), acl


def write_access(home: HubHome, registry: Registry) -> bool:
    """Rewrite ACL and CRL from the registry and ask a running broker to re-read them, only
    when they changed (True then). On a reload mosquitto 2.0 re-applies its security to every
    session; a *disconnected* persistent session (a hub process that died or is reconnecting)
    is disconnected once more before its ``user`` block is looked up, so it keeps none of
    those rights until it is resumed, and the broker silently drops what it routes to it
    meanwhile (mosquitto_security_apply_default; upstream issue 2934). Patterns are matched
    per message, not held per session, so render_acl gives the hub its reading rights as one:
    tests/provisioning/test_broker_reload.py has a hub session away across a real reload."""
    wanted = wanted_access(registry)
    if wanted == access_on_disk(home):
        return False
    ca_key, ca_cert = home.load_ca()
    atomic_write(home.crl, ca.build_crl(ca_key, ca_cert, wanted[0]))
    atomic_write(home.broker_dir / "acl", wanted[1])
    reload_running_broker(home)
    return True


class AccessSync(TaskGroupService):
    """Keeps the broker's CRL and ACL in step with the registry. Singleton work: a revocation
    or a new bundle recorded by any hub process (or host, on PostgreSQL) reaches the broker
    within ``interval_s``, and only the process that holds the singleton lock writes."""

    name = "access"

    def __init__(self, home: HubHome, registry: Registry, interval_s: float = 5.0) -> None:
        super().__init__()
        self.home = home
        self.registry = registry
        self.interval_s = interval_s

    async def start(self) -> None:
        self.spawn(self._loop(), "sync")

    async def stop(self) -> None:
        await self.cancel_tasks()

    async def _loop(self) -> None:
        while True:
            write_access(self.home, self.registry)
            await asyncio.sleep(self.interval_s)


def _pid_file(home: HubHome) -> Path:
    return home.run_dir / "mosquitto.pid"


def reload_running_broker(home: HubHome) -> bool:
    try:
        pid = int(_pid_file(home).read_text())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def find_mosquitto(configured: str) -> str:
    found = shutil.which(configured) or shutil.which(configured, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ConfigError(
            "mosquitto is not installed: run `sudo apt-get install mosquitto` "
            "(or use --broker external)"
        )
    return found


def stop_stale_broker(home: HubHome, timeout: float = 10.0) -> bool:
    """Stop a mosquitto that a killed hub left running on this home (SIGTERM, so it saves
    its persistent sessions). Otherwise the new broker cannot bind the port and the hub talks to
    the orphan (found by the fault scenario "hub killed -9 and restarted")."""
    try:
        proc = psutil.Process(int(_pid_file(home).read_text()))
        ours = str(home.broker_dir / "mosquitto.conf") in proc.cmdline()
    except (FileNotFoundError, ValueError, psutil.Error):
        return False
    if not ours:
        return False
    log.warning("stopping the broker a previous hub process left running", extra={"pid": proc.pid})
    proc.terminate()
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    return True


class ManagedBroker:
    """Runs mosquitto as a child and restarts it if it dies; stops it with the hub."""

    name = "broker"

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        self.home = home
        self.config = config
        self.registry = registry
        self.binary = find_mosquitto(config.broker.mosquitto)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    async def start(self) -> None:
        self.home.broker_dir.mkdir(parents=True, exist_ok=True)
        self.home.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.home.broker_dir / "mosquitto.conf", render_config(self.home, self.config))
        ca_key, ca_cert = self.home.load_ca()
        atomic_write(self.home.crl, ca.build_crl(ca_key, ca_cert, self.registry.revoked_serials()))
        atomic_write(self.home.broker_dir / "acl", render_acl(self.registry))
        await asyncio.to_thread(stop_stale_broker, self.home)
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="broker:supervise")

    async def _spawn(self) -> None:
        conf = self.home.broker_dir / "mosquitto.conf"
        log_file = open(self.home.broker_dir / "mosquitto.log", "ab")  # noqa: SIM115
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(conf), stdout=log_file, stderr=log_file
            )
        finally:
            log_file.close()
        atomic_write(_pid_file(self.home), str(self._proc.pid))
        await self._wait_listening()
        log.info("broker started", extra={"pid": self._proc.pid, "port": self.config.hub.mqtt_port})

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        host = (
            "127.0.0.1"
            if self.config.hub.bind_host in ("0.0.0.0", "")
            else self.config.hub.bind_host
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            assert self._proc is not None
            if self._proc.returncode is not None:
                tail = (self.home.broker_dir / "mosquitto.log").read_text(errors="replace")[-600:]
                raise LinkError(f"mosquitto exited with {self._proc.returncode}: {tail.strip()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, self.config.hub.mqtt_port)
                writer.close()
                return
            if asyncio.get_running_loop().time() > deadline:
                raise LinkError(f"mosquitto did not listen on port {self.config.hub.mqtt_port}")
            await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("broker exited; restarting", extra={"code": code, "restarts": self.restarts})
            await asyncio.sleep(RESTART_DELAY_S)
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _pid_file(self.home).unlink(missing_ok=True)
