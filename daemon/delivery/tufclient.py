"""The TUF side of the reconciler: python-tuf's ngclient ``Updater`` on a file-locked cache.

The trust anchor is the root pinned from the provisioning bundle (no trust on first use); the
cache keeps the newest verified metadata so rollback and freeze attacks are caught across
restarts. One refresh at a time: an exclusive ``flock`` on the cache directory (the ``spoke``
CLI and the daemon share it). Every python-tuf error becomes a ``ModelRefused`` with a code
naming what was wrong, or ``DeliveryInterrupted`` when the hub could not be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from appliance.fsutil import file_lock
from daemon.delivery.errors import DeliveryInterrupted, ModelRefused
from daemon.delivery.fetch import RangeFetcher


def classify(exc: Exception) -> ModelRefused | DeliveryInterrupted:
    """Name what a python-tuf error means for an operator reading the hub's event log."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return ModelRefused("expired-metadata", f"{text} (freeze attack or a stale hub)")
    if isinstance(exc, exceptions.EqualVersionNumberError):
        return ModelRefused("bad-version", text)
    if isinstance(exc, exceptions.BadVersionNumberError):
        # "Expected targets v3, got v2": metadata that another snapshot names (mix-and-match);
        # otherwise a version below one already trusted (rollback).
        if text.startswith("Expected"):
            return ModelRefused("mix-and-match", text)
        return ModelRefused("metadata-rollback", text)
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return ModelRefused("bad-signature", text)
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return ModelRefused("metadata-mismatch", text)
    if isinstance(exc, exceptions.DownloadLengthMismatchError):
        return ModelRefused("endless-data", text)
    if isinstance(exc, exceptions.DownloadError):
        return DeliveryInterrupted("hub-unreachable", text)
    if isinstance(exc, exceptions.RepositoryError):
        return ModelRefused("repository-error", text)
    return ModelRefused("repository-error", f"{type(exc).__name__}: {text}")


@dataclass(frozen=True)
class Resolved:
    info: TargetFile
    url: str

    @property
    def sha256(self) -> str:
        return self.info.hashes["sha256"]


class TufClient:
    def __init__(
        self, cache: Path, root: bytes, base_url: str, fetcher: RangeFetcher
    ) -> None:
        self.cache = cache
        self.root = root
        self.base_url = base_url.rstrip("/")
        self.fetcher = fetcher

    def resolve(self, target: str) -> Resolved:
        """Refresh the top-level metadata and return the signed info of ``target``."""
        with file_lock(self.cache):
            try:
                updater = Updater(
                    metadata_dir=str(self.cache / "metadata"),
                    metadata_base_url=f"{self.base_url}/metadata/",
                    target_base_url=f"{self.base_url}/targets/",
                    fetcher=self.fetcher,
                    config=UpdaterConfig(),
                    bootstrap=self.root,
                )
                updater.refresh()
                info = updater.get_targetinfo(target)
            except (exceptions.RepositoryError, exceptions.DownloadError, ValueError) as exc:
                raise classify(exc) from exc
        if info is None:
            raise ModelRefused("unknown-target", f"{target} is not signed in the repository")
        dirname, sep, base = info.path.rpartition("/")
        url = f"{self.base_url}/targets/{dirname}{sep}{info.hashes['sha256']}.{base}"
        return Resolved(info, url)
