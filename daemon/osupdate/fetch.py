"""Fetch a desired OS version: its signed manifest, then every file it names, each through the
TUF client and ``download_target`` (capped by the signed length and the deadline, resumable),
into a source directory laid out for systemd-sysupdate (the files plus SHA256SUMS).

Nothing reaches the source directory until every file is verified, so a refusal leaves the
previous contents and the slots as they were.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from pathlib import Path

from pydantic import ValidationError
from tuf.api import exceptions
from tuf.api.metadata import TargetFile

from appliance.fsutil import atomic_write, fsync_dir
from appliance.osupdate import UNAME_ARCH, DesiredOs, OsManifest, pe_architecture
from daemon.delivery.download import download_target
from daemon.delivery.errors import ModelRefused
from daemon.delivery.fetch import RangeFetcher
from daemon.delivery.tufclient import TufClient

log = logging.getLogger(__name__)


def machine_architecture() -> str:
    """This machine's architecture in systemd's naming (``x86-64``, ``arm64``)."""
    machine = platform.machine()
    return UNAME_ARCH.get(machine, machine)


def fetch_os(
    client: TufClient,
    fetcher: RangeFetcher,
    desired: DesiredOs,
    work: Path,
    source: Path,
    deadline: float,
    architecture: str | None = None,
) -> OsManifest:
    """Download and verify ``desired`` into ``work`` (partial files kept for the next try on
    a lost link), then replace ``source`` with exactly its files and a SHA256SUMS.

    Raises ``ModelRefused`` (tampered, wrong architecture, a manifest that does not match its
    targets) or ``DeliveryInterrupted`` (link lost, deadline, disk full)."""
    arch = architecture or machine_architecture()
    _drop_other_partials(work, desired.version)
    resolved = client.resolve(desired.target)
    # Named for its version: the last version's finished manifest stays behind as a partial
    # file, and "resuming" it for the next version would splice two manifests.
    path = download_target(fetcher, resolved.url, resolved.info,
                           work / f"spoke_{desired.version}.manifest.json.partial", deadline)
    try:
        manifest = OsManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ModelRefused("bad-os-manifest", f"{desired.target}: {exc.errors()[0]['msg']}") \
            from exc
    if manifest.version != desired.version:
        raise ModelRefused("target-mismatch", f"{desired.target} describes version "
                           f"{manifest.version}, not {desired.version}")
    if manifest.architecture != arch:
        raise ModelRefused("wrong-architecture", f"OS {manifest.version} is built for "
                           f"{manifest.architecture}; this appliance is {arch}")
    fetched: dict[str, Path] = {}
    for file in manifest.files:
        target = client.resolve(manifest.target(file))
        if (target.sha256, target.info.length) != (file.sha256, file.length):
            raise ModelRefused("target-mismatch", f"{target.info.path}: the signed target and "
                               "the signed manifest disagree")
        partial = work / f"{file.name}.partial"
        _take_back_verified(source / file.name, partial, target.info)
        fetched[file.name] = download_target(fetcher, target.url, target.info, partial,
                                             deadline)
        if file.role == "uki":
            with fetched[file.name].open("rb") as f:
                uki_arch = pe_architecture(f.read(4096))
            if uki_arch != arch:
                fetched[file.name].unlink()
                raise ModelRefused("wrong-architecture", f"{file.name} is a UKI for "
                                   f"{uki_arch or 'no known architecture'}; this appliance "
                                   f"is {arch}")
    _install_source(source, fetched, manifest)
    return manifest


def _take_back_verified(kept: Path, partial: Path, info: TargetFile) -> None:
    """A file the source still holds was verified and then never staged (the power failed
    while sysupdate wrote it: the source goes once sysupdate ran). If it is exactly the signed
    target, it becomes the complete partial download, so a box on a metered link does not
    fetch a root image of hundreds of megabytes again; anything else there is dropped, never
    trusted and never a reason to refuse the version."""
    if partial.exists() or not kept.is_file():
        return
    try:
        with kept.open("rb") as f:
            info.verify_length_and_hashes(f)
    except exceptions.LengthOrHashMismatchError:
        log.info("dropped a file an interrupted staging left that is not its signed target",
                 extra={"file": kept.name})
        kept.unlink()
        return
    partial.parent.mkdir(parents=True, exist_ok=True)
    os.replace(kept, partial)
    log.info("reusing a verified file an interrupted staging left, not downloading it again",
             extra={"file": kept.name, "bytes": info.length})


def _drop_other_partials(work: Path, version: str) -> None:
    """Partial downloads of another version (the hub changed its mind mid-download) would only
    take room on the data partition: resuming is for this version's files."""
    if not work.is_dir():
        return
    for path in work.glob("spoke_*.partial"):
        if not path.name.startswith(f"spoke_{version}."):
            path.unlink(missing_ok=True)


def _install_source(source: Path, fetched: dict[str, Path], manifest: OsManifest) -> None:
    """Make ``source`` hold exactly this version's files and their SHA256SUMS (sysupdate's
    url-file source reads the list first)."""
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for name, path in fetched.items():
        os.replace(path, source / name)
    sums = "".join(f"{f.sha256}  {f.name}\n" for f in manifest.files)
    atomic_write(source / "SHA256SUMS", sums)
    fsync_dir(source)

