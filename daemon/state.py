"""The appliance's state directory: identity, bundle copy and the status file, by name."""

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance import keystore
from appliance.fsutil import atomic_write, fsync_dir
from appliance.identity import PrivateKey, cert_not_after, load_cert
from appliance.keystore import KeyStore


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "spoke.toml"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle.spoke"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def previous_identity(self) -> Path:
        """The identity a renewal replaced, kept until the next one (and restored after a crash)."""
        return self.root / "identity.previous"

    @property
    def renewing(self) -> Path:
        """Renewal in progress: the new key lives here until its certificate is proven."""
        return self.root / "renew"

    @property
    def pending(self) -> Path:
        """Enrollment in progress: the new key lives here until the hub has signed it."""
        return self.root / "enroll"

    @property
    def status(self) -> Path:
        return self.root / "status.json"


@dataclass(frozen=True)
class Identity:
    device_id: str
    labels: dict[str, str]
    hub_host: str
    mqtt_port: int
    http_port: int
    cert: Path
    ca: Path
    keys: KeyStore = field(default_factory=KeyStore)
    #: The model repository's URL from the bundle; None: the hub's own.
    repository_url: str | None = None

    @property
    def key(self) -> Path:
        """Where TLS reads the private key from (for a TPM-sealed key, a memfd: unsealing
        raises IdentityError on a box whose TPM did not seal it)."""
        return self.keys.tls_path(self.cert.parent)

    def private_key(self) -> PrivateKey:
        return self.keys.load(self.cert.parent)

    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert.read_bytes())

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) >= cert_not_after(self.certificate())

    def cert_summary(self) -> dict[str, Any]:
        """What status and reported state say about the certificate and its key."""
        cert = self.certificate()
        return {
            "serial": str(cert.serial_number),
            "not_after": cert_not_after(cert),
            "expired": self.expired(),
            "key": keystore.kind_in(self.cert.parent),
        }


SERVER_CERT = "server.crt"
IDENTITY_FILES = ("device.crt", "ca.crt", "identity.json")


def load_identity(state: StateDir, keys: KeyStore | None = None) -> Identity | None:
    """The enrolled identity, or None. A directory missing any file is not an identity.

    ``keys`` opens a TPM-sealed key (its TPM); the key is read only when it is used."""
    d = state.identity
    if not _complete(d):
        return None
    meta = json.loads((d / "identity.json").read_text())
    return Identity(
        device_id=meta["device_id"],
        labels=meta["labels"],
        hub_host=meta["hub_host"],
        mqtt_port=meta["mqtt_port"],
        http_port=meta["http_port"],
        cert=d / "device.crt",
        ca=d / "ca.crt",
        keys=keys or KeyStore(),
        repository_url=meta.get("repository_url"),
    )


def _complete(d: Path) -> bool:
    return keystore.kind_in(d) is not None and all((d / n).exists() for n in IDENTITY_FILES)


def save_identity(
    state: StateDir,
    keys: KeyStore,
    key: PrivateKey,
    cert_pem: bytes,
    ca_pem: bytes,
    meta: dict[str, Any],
    server_pem: bytes | None = None,
) -> None:
    """Write every file into a fresh directory, then rename it into place.

    A power loss leaves either no identity (enrollment starts over with the pending key) or a
    complete one; a leftover temp directory is removed on the next start. An identity being
    replaced (renewal, re-enrollment) moves to ``identity.previous`` first; if the power goes
    between the two renames, ``clean_leftovers`` puts it back.
    """
    tmp = state.root / f".identity.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    keys.save(tmp, key)
    atomic_write(tmp / "device.crt", cert_pem)
    atomic_write(tmp / "ca.crt", ca_pem)
    atomic_write(tmp / "identity.json", json.dumps(meta, indent=2))
    if server_pem is not None:  # the API's certificate (daemon/api/tls.py), same key
        atomic_write(tmp / SERVER_CERT, server_pem)
    fsync_dir(tmp)
    if state.identity.exists():
        shutil.rmtree(state.previous_identity, ignore_errors=True)
        os.rename(state.identity, state.previous_identity)
    os.rename(tmp, state.identity)
    fsync_dir(state.root)


def clean_leftovers(state: StateDir) -> None:
    for leftover in state.root.glob(".identity.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not state.identity.exists() and _complete(state.previous_identity):
        os.rename(state.previous_identity, state.identity)
        fsync_dir(state.root)


class StatusFile:
    """What `spoke status` (and the console banner) read: provisioning and hub link state."""

    def __init__(self, state: StateDir) -> None:
        self.path = state.status
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "device_id": None,
            "provisioning": {"state": "starting", "reason": None, "since": time.time()},
            "hub": {"connected": False, "since": None, "address": None, "last_contact": None},
        }

    def provisioning(self, state: str, reason: str | None = None) -> None:
        current = self.data["provisioning"]
        if current["state"] != state or current["reason"] != reason:
            self.data["provisioning"] = {"state": state, "reason": reason, "since": time.time()}
            self.write()

    def hub(self, connected: bool, address: str | None = None, error: str | None = None) -> None:
        hub = self.data["hub"]
        if hub["connected"] != connected:
            hub["since"] = time.time()
        hub.update(connected=connected, error=error)
        if address:
            hub["address"] = address
        if connected:
            hub["last_contact"] = time.time()
        self.write()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.write()

    def write(self) -> None:
        self.data["updated_at"] = time.time()
        atomic_write(self.path, json.dumps(self.data, indent=2))


def read_status(state: StateDir) -> dict[str, Any]:
    """What the daemon last wrote to ``status.json`` ({} if nothing readable)."""
    try:
        data = json.loads(state.status.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def daemon_running(status: dict[str, Any]) -> bool:
    """Whether the daemon that wrote ``status`` runs still: its process is alive and it has
    not said it stopped."""
    try:
        pid = int(status.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    if not pid or status.get("stopped"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_daemon(state: StateDir, sig: signal.Signals) -> bool:
    """Tell the daemon of ``state`` that another process changed something it owns on disk
    (``spoke models``: SIGHUP; ``spoke finetune start|cancel``: ``jobs.JOBS_CHANGED``). False
    when no daemon runs there or it may not be signalled."""
    status = read_status(state)
    if not daemon_running(status):
        return False
    try:
        os.kill(int(status["pid"]), sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
