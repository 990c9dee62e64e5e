"""The hub's signed model repository: TUF metadata built with python-tuf's Metadata API.

Layout (``public/`` is plain files, in ``H/repository/public`` or where ``[repository] url``
says, a directory or an S3-compatible bucket; any static server or the bucket can serve it)::

    public/metadata/1.root.json, 2.root.json ...   every root version (clients walk rotations)
    public/metadata/root.json                      the newest root (what bundles carry)
    public/metadata/timestamp.json                 online key, short expiry, re-signed by the hub
    public/metadata/{N}.snapshot.json              consistent snapshots: every version stays
    public/metadata/{N}.targets.json
    public/targets/models/{name}/{sha256}.{name}-{version}.tar
    public/targets/os/{version}/{sha256}.{file}     OS update artefacts (provisioning/osupdates.py)
    keys/{targets,snapshot,timestamp}.pem          online keys (mode 0600), never served
    <offline dir>/root-{i}.pem                     root keys: move them off the hub

A model is one target: an uncompressed tar of its artifact (``card.json``, ``model.onnx``,
``weights.safetensors``), so its sha256 is the content address the appliance stores it under,
and its signed ``custom`` fields carry name, version and the card's sha256.

Writers take an exclusive lock on ``.lock`` (``spoke-hub models publish`` and the serving hub
may both write). Files are written target first, then targets, snapshot and timestamp, each
atomically, so a client never sees metadata that names a file not yet there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from appliance.config import RepositorySection
from appliance.errors import ConfigError, DataError
from appliance.fsutil import atomic_write, file_lock, write_secret

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
TARGET_FORMAT = "spoke-artifact-tar/1"
ARTIFACT_FILES = ("card.json", "model.onnx", "weights.safetensors")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PUBLIC_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class RepositoryError(DataError):
    """The repository is missing, inconsistent, or a publish is refused."""


def target_path(name: str, version: str) -> str:
    """Where a model version lives in the repository, relative to ``targets/``."""
    if not _SAFE.match(name) or not _SAFE.match(version):
        raise RepositoryError(f"not a safe model name/version: {name!r} {version!r}")
    return f"models/{name}/{name}-{version}.tar"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Storage(Protocol):
    """Where the public files go: a directory on the hub, or memory in the attack tests."""

    def read(self, rel: str) -> bytes | None: ...

    def write(self, rel: str, data: bytes) -> None: ...


class DirStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        atomic_write(self.root / rel, data)


class MemoryStorage:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read(self, rel: str) -> bytes | None:
        return self.files.get(rel)

    def write(self, rel: str, data: bytes) -> None:
        self.files[rel] = data


@dataclass(frozen=True)
class Expiry:
    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=90)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(days=1)

    @classmethod
    def from_config(cls, c: RepositorySection) -> Expiry:
        return cls(
            dt.timedelta(days=c.root_expiry_days),
            dt.timedelta(days=c.targets_expiry_days),
            dt.timedelta(days=c.snapshot_expiry_days),
            dt.timedelta(seconds=c.timestamp_expiry_s),
        )

    def of(self, role: str) -> dt.timedelta:
        value: dt.timedelta = getattr(self, role)
        return value


def new_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def signer_to_pem(signer: CryptoSigner) -> bytes:
    return signer.private_bytes


def signer_from_pem(pem: bytes) -> CryptoSigner:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("TUF keys must be Ed25519")
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def _bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


class ModelRepository:
    """Reads and writes the repository's metadata through a ``Storage``.

    ``root_signers`` are only needed to create or rotate the root; everyday publishing and the
    timestamp refresh use the ``online`` signers alone.
    """

    def __init__(
        self,
        storage: Storage,
        online: dict[str, Signer],
        expiry: Expiry = Expiry(),
    ) -> None:
        self.storage = storage
        self.online = online
        self.expiry = expiry

    # --- creation -------------------------------------------------------------------------

    def create(self, root_signers: list[Signer], threshold: int) -> None:
        """Version 1 of every role: root signed by all ``root_signers`` (threshold of them
        needed), empty targets, consistent snapshots on."""
        if self.storage.read("metadata/1.root.json") is not None:
            raise RepositoryError("the repository already exists")
        if not 1 <= threshold <= len(root_signers):
            raise RepositoryError(f"root threshold {threshold} of {len(root_signers)} keys")
        now = _now()
        root = Root(expires=now + self.expiry.root, consistent_snapshot=True)
        for signer in root_signers:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = threshold
        for role in ONLINE_ROLES:
            root.add_key(self.online[role].public_key, role)
        md = Metadata(root)
        for signer in root_signers:
            md.sign(signer, append=True)
        data = _bytes(md)
        self.storage.write("metadata/1.root.json", data)
        self.storage.write("metadata/root.json", data)
        targets = Metadata(Targets(expires=now + self.expiry.targets))
        self._write_targets(targets)

    # --- reading --------------------------------------------------------------------------

    def _load(self, rel: str) -> Metadata[Any]:
        data = self.storage.read(rel)
        if data is None:
            raise RepositoryError(f"the repository has no {rel}; run `spoke-hub models init`")
        return Metadata.from_bytes(data)

    def root_bytes(self) -> bytes:
        data = self.storage.read("metadata/root.json")
        if data is None:
            raise RepositoryError("the repository has no root; run `spoke-hub models init`")
        return data

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("metadata/timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._load(f"metadata/{version}.snapshot.json")

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return self._load(f"metadata/{version}.targets.json")

    def models(self) -> list[dict[str, Any]]:
        """Every published model version, with its target path, length and sha256."""
        rows = []
        for path, info in self.targets().signed.targets.items():
            if not path.startswith("models/"):
                continue  # OS versions share the repository (provisioning/osupdates.py)
            custom = info.custom or {}
            rows.append(
                {
                    "name": custom.get("name"),
                    "version": custom.get("version"),
                    "target": path,
                    "length": info.length,
                    "sha256": info.hashes.get("sha256"),
                    "card_sha256": custom.get("card_sha256"),
                    "published_at": custom.get("published_at"),
                }
            )
        return sorted(rows, key=lambda r: (str(r["name"]), str(r["published_at"])))

    # --- writing --------------------------------------------------------------------------

    def _sign(self, md: Metadata[Any], role: str) -> bytes:
        md.sign(self.online[role])
        return _bytes(md)

    def _write_targets(self, targets: Metadata[Targets]) -> None:
        """Sign and write targets, then a snapshot naming it, then a timestamp naming that."""
        self.storage.write(
            f"metadata/{targets.signed.version}.targets.json", self._sign(targets, "targets")
        )
        now = _now()
        try:
            previous = self.snapshot().signed.version
        except RepositoryError:
            previous = 0
        snapshot = Metadata(Snapshot(version=previous + 1, expires=now + self.expiry.snapshot))
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self.storage.write(
            f"metadata/{snapshot.signed.version}.snapshot.json", self._sign(snapshot, "snapshot")
        )
        self._write_timestamp(snapshot.signed.version)

    def _write_timestamp(self, snapshot_version: int) -> None:
        try:
            previous = self.timestamp().signed.version
        except RepositoryError:
            previous = 0
        ts = Metadata(
            Timestamp(
                version=previous + 1,
                expires=_now() + self.expiry.timestamp,
                snapshot_meta=MetaFile(version=snapshot_version),
            )
        )
        self.storage.write("metadata/timestamp.json", self._sign(ts, "timestamp"))

    def add_target(self, path: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        """Store ``data`` under its hash-prefixed name and sign a targets version naming it."""
        return self.add_targets([(path, data, custom)])[0]

    def add_targets(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> list[TargetFile]:
        """Store several targets and sign ONE targets version naming them all (an OS version
        appears whole or not at all)."""
        infos = []
        for path, data, custom in items:
            info = TargetFile.from_data(path, data, ["sha256"])
            info.unrecognized_fields["custom"] = custom
            dirname, _, base = path.rpartition("/")
            self.storage.write(f"targets/{dirname}/{info.hashes['sha256']}.{base}", data)
            infos.append(info)
        targets = self.targets()
        for info in infos:
            targets.signed.targets[info.path] = info
        targets.signed.version += 1
        targets.signed.expires = _now() + self.expiry.targets
        self._write_targets(targets)
        return infos

    def rotate_root(
        self, root_signers: list[Signer], new_online: dict[str, Signer] | None = None
    ) -> int:
        """Sign root version N+1 with the offline ``root_signers`` (a threshold of them), with
        fresh online keys for the roles in ``new_online`` (a compromised or aging online key),
        then re-sign targets, snapshot and timestamp with the online keys now trusted.

        Appliances follow the chain from the root they pinned: each new root must carry a
        threshold of signatures from the old root's keys and from its own.
        """
        from tuf.api.exceptions import UnsignedMetadataError

        current = Metadata[Root].from_bytes(self.root_bytes())
        root = current.signed
        root.version += 1
        root.expires = _now() + self.expiry.root
        for role, signer in (new_online or {}).items():
            if role not in ONLINE_ROLES:
                raise RepositoryError(f"{role} is not an online role")
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(signer.public_key, role)
        md = Metadata(root)
        for signer in root_signers:
            md.sign(signer, append=True)
        try:
            current.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
            root.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepositoryError(f"not enough root keys to sign a new root: {exc}") from exc
        data = _bytes(md)
        self.storage.write(f"metadata/{root.version}.root.json", data)
        self.storage.write("metadata/root.json", data)
        self.online.update(new_online or {})
        targets = self.targets()
        targets.signed.version += 1
        targets.signed.expires = _now() + self.expiry.targets
        self._write_targets(targets)
        return root.version

    def refresh(self, now: dt.datetime | None = None) -> list[str]:
        """Re-sign online roles that have less than half their lifetime left; returns them.

        Targets and snapshot are re-signed as new versions (with a new timestamp), the timestamp
        alone otherwise. Run by the serving hub every ``refresh_interval_s``.
        """
        now = now or _now()
        renewed: list[str] = []

        def stale(md: Metadata[Any], role: str) -> bool:
            return bool(md.signed.expires - now < self.expiry.of(role) / 2)

        targets = self.targets()
        if stale(targets, "targets"):
            targets.signed.version += 1
            targets.signed.expires = now + self.expiry.targets
            self._write_targets(targets)
            return ["targets", "snapshot", "timestamp"]
        snapshot = self.snapshot()
        if stale(snapshot, "snapshot"):
            snapshot.signed.version += 1
            snapshot.signed.expires = now + self.expiry.snapshot
            self.storage.write(
                f"metadata/{snapshot.signed.version}.snapshot.json",
                self._sign(snapshot, "snapshot"),
            )
            self._write_timestamp(snapshot.signed.version)
            return ["snapshot", "timestamp"]
        if stale(self.timestamp(), "timestamp"):
            self._write_timestamp(snapshot.signed.version)
            renewed.append("timestamp")
        return renewed


# --- the hub's repository on disk ---------------------------------------------------------


def _online_signers(keys_dir: Path) -> dict[str, Signer]:
    try:
        return {r: signer_from_pem((keys_dir / f"{r}.pem").read_bytes()) for r in ONLINE_ROLES}
    except FileNotFoundError as exc:
        raise RepositoryError(f"missing online key {exc.filename}") from exc


def safe_key(rel: str) -> bool:
    """A name inside the public files: plain segments, no ``..``, no leading slash."""
    return bool(_PUBLIC_NAME.match(rel)) and ".." not in rel.split("/")


def public_dir(root: Path, config: RepositorySection) -> Path | None:
    """The directory of the public files, or None when they live in an object store."""
    if config.url.startswith("s3://"):
        return None
    return Path(urlsplit(config.url).path) if config.url else root / "public"


def public_storage(root: Path, config: RepositorySection) -> Storage:
    """Where ``[repository] url`` puts the public files (metadata and targets)."""
    directory = public_dir(root, config)
    if directory is not None:
        return DirStorage(directory)
    from provisioning.objectstore import S3Storage

    return S3Storage(config.url, config.endpoint, config.region)


def exists(root: Path, config: RepositorySection) -> bool:
    return public_storage(root, config).read("metadata/1.root.json") is not None


def open_repository(root: Path, config: RepositorySection) -> ModelRepository:
    storage = public_storage(root, config)
    if storage.read("metadata/1.root.json") is None:
        raise RepositoryError(
            f"no model repository in {config.url or root}; create it with `spoke-hub models init`"
        )
    return ModelRepository(storage, _online_signers(root / "keys"), Expiry.from_config(config))


def init_repository(
    root: Path, offline_dir: Path, config: RepositorySection, keys: int, threshold: int
) -> list[Path]:
    """Create the repository: ``keys`` root keys (``threshold`` of them sign a root) written
    to ``offline_dir``, and the online keys under ``root/keys``. Returns the root key files."""
    with file_lock(root):
        if exists(root, config):
            raise RepositoryError(f"{config.url or root} already holds a model repository")
        if not 1 <= threshold <= keys:
            raise ConfigError(f"root threshold {threshold} must be between 1 and {keys}")
        online: dict[str, Signer] = {}
        for role in ONLINE_ROLES:
            signer = new_signer()
            write_secret(root / "keys" / f"{role}.pem", signer_to_pem(signer))
            online[role] = signer
        root_signers: list[Signer] = []
        paths = []
        offline_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i in range(1, keys + 1):
            signer = new_signer()
            path = offline_dir / f"root-{i}.pem"
            write_secret(path, signer_to_pem(signer))
            root_signers.append(signer)
            paths.append(path)
        repo = ModelRepository(public_storage(root, config), online, Expiry.from_config(config))
        repo.create(root_signers, threshold)
    return paths


def rotate_root(
    root: Path, config: RepositorySection, root_key_files: list[Path], roles: list[str]
) -> int:
    """Rotate the online keys of ``roles`` (new keys written to ``root/keys``), signing the new
    root with the given offline root key files. Returns the new root version."""
    root_signers: list[Signer] = []
    for path in root_key_files:
        try:
            root_signers.append(signer_from_pem(path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"cannot read root key {path}: {exc.strerror}") from exc
    with file_lock(root):
        repo = open_repository(root, config)
        fresh: dict[str, Signer] = {role: new_signer() for role in roles}
        version = repo.rotate_root(root_signers, fresh)
        for role, signer in fresh.items():
            assert isinstance(signer, CryptoSigner)
            write_secret(root / "keys" / f"{role}.pem", signer_to_pem(signer))
    return version


def ensure_repository(root: Path, offline_dir: Path, config: RepositorySection) -> None:
    """Create the repository with the configured key counts unless it exists."""
    if not exists(root, config):
        with contextlib.suppress(RepositoryError):
            init_repository(root, offline_dir, config, config.root_keys, config.root_threshold)


@contextlib.contextmanager
def writable(
    root: Path, offline_dir: Path, config: RepositorySection
) -> Iterator[ModelRepository]:
    """The repository (created if need be) under the writers' lock: how every publish
    (models, OS versions) adds targets."""
    ensure_repository(root, offline_dir, config)
    with file_lock(root):
        yield open_repository(root, config)


# --- artifacts as targets -------------------------------------------------------------------


def pack_tar(artifact_dir: Path) -> bytes:
    """The artifact as a target: a deterministic tar (same files, same bytes, same hash)."""
    from models.artifact import pack_artifact

    out = io.BytesIO()
    pack_artifact(artifact_dir, out)
    return out.getvalue()


def publish(
    repo: ModelRepository, artifact_dir: Path, name: str, version: str, card_sha256: str
) -> tuple[dict[str, Any], bool]:
    """Add a validated artifact as a target. A version is immutable: publishing the same bytes
    again is a no-op (returns False), different bytes under a published version are refused."""
    path = target_path(name, version)
    data = pack_tar(artifact_dir)
    digest = hashlib.sha256(data).hexdigest()
    existing = repo.targets().signed.targets.get(path)
    if existing is not None:
        if existing.hashes.get("sha256") == digest:
            return _row(path, existing), False
        raise RepositoryError(
            f"{name} {version} is already published with other contents; "
            "publish a new version instead (versions are immutable)"
        )
    custom = {
        "format": TARGET_FORMAT,
        "name": name,
        "version": version,
        "card_sha256": card_sha256,
        "published_at": _now().isoformat(),
    }
    info = repo.add_target(path, data, custom)
    return _row(path, info), True


def _row(path: str, info: TargetFile) -> dict[str, Any]:
    custom = info.custom or {}
    return {
        "name": custom.get("name"),
        "version": custom.get("version"),
        "target": path,
        "length": info.length,
        "sha256": info.hashes["sha256"],
    }


def root_json(root: Path, config: RepositorySection) -> str | None:
    """The newest root metadata as text (what bundles carry), or None without a repository."""
    data = public_storage(root, config).read("metadata/root.json")
    return data.decode() if data is not None else None


def describe_root(data: bytes) -> dict[str, Any]:
    md = Metadata[Root].from_bytes(data)
    role = md.signed.roles[Root.type]
    return {
        "version": md.signed.version,
        "threshold": role.threshold,
        "keys": len(role.keyids),
        "expires": md.signed.expires.isoformat(),
        "consistent_snapshot": md.signed.consistent_snapshot,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
