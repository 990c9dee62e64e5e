"""Publishing OS versions into the hub's signed repository (the same TUF trust root as models).

``make image`` writes a version's update artefacts into a directory::

    manifest.json        {"version": "2", "architecture": "x86-64"}
    SHA256SUMS           "<sha256>  <file>" lines (sha256sum's format), one per artefact
    spoke_2.efi          the unified kernel image
    spoke_2.root.raw.gz  the root file system image, gzip-compressed

``publish`` checks them all before it writes anything, then adds the artefacts and a signed
``OsManifest`` as targets under ``os/<version>/`` in ONE targets version.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.fsutil import sha256_file
from appliance.osupdate import (
    GZIP_MAGIC,
    PE_MACHINES,
    ROOT_SUFFIX,
    OsFile,
    OsManifest,
    manifest_target,
    pe_architecture,
    role_of,
)
from provisioning.repository import ModelRepository, RepositoryError

OS_TARGET_FORMAT = "spoke-os/1"


class BuildManifest(BaseModel):
    """``DIR/manifest.json`` as the image build writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(pattern=r"^[0-9][A-Za-z0-9.+-]{0,63}$")
    architecture: str


def read_checksums(path: Path) -> dict[str, str]:
    """``SHA256SUMS`` as {file: sha256}; a malformed line is refused, not skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise RepositoryError(f"{path} is missing; the image build writes it beside the "
                              "artefacts (sha256sum format)") from exc
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        name = name.lstrip("*")
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise RepositoryError(f"{path}:{n}: not '<sha256>  <file>'")
        sums[name] = digest.lower()
    return sums


def check_release(directory: Path) -> OsManifest:
    """Validate an OS version's artefacts and return the manifest to sign. Refuses a missing
    file or checksum, a mismatched checksum, an unknown file, a UKI built for another
    architecture than the manifest says."""
    try:
        build = BuildManifest.model_validate_json((directory / "manifest.json").read_bytes())
    except FileNotFoundError as exc:
        raise RepositoryError(f"{directory} has no manifest.json (version, architecture)") \
            from exc
    except ValidationError as exc:
        raise RepositoryError(f"{directory}/manifest.json: {exc.errors()[0]['msg']}") from exc
    if build.architecture not in PE_MACHINES.values():
        raise RepositoryError(f"architecture {build.architecture!r} is not one of "
                              f"{sorted(PE_MACHINES.values())}")
    sums = read_checksums(directory / "SHA256SUMS")
    files = []
    for name in sorted(sums):
        role = role_of(name, build.version)
        if role is None:
            raise RepositoryError(f"SHA256SUMS names {name}, which is not spoke_"
                                  f"{build.version}.efi or spoke_{build.version}{ROOT_SUFFIX}")
        path = directory / name
        if not path.is_file():
            raise RepositoryError(f"{path} is listed in SHA256SUMS but missing")
        digest = sha256_file(path)
        if digest != sums[name]:
            raise RepositoryError(f"{name}: sha256 {digest[:16]}... does not match SHA256SUMS "
                                  f"({sums[name][:16]}...); rebuild or recopy the artefacts")
        with path.open("rb") as f:
            head = f.read(4096)
        if role == "uki" and (arch := pe_architecture(head)) != build.architecture:
            raise RepositoryError(f"{name} is a UKI for {arch or 'no known architecture'}, "
                                  f"but the manifest says {build.architecture}")
        # systemd-pull would write an uncompressed file into the slot as it is: refuse it here.
        if role == "root" and not head.startswith(GZIP_MAGIC):
            raise RepositoryError(f"{name} is not gzip-compressed; the image build writes it "
                                  "with gzip (image/build.sh)")
        files.append(OsFile(name=name, role=role, sha256=digest, length=path.stat().st_size))
    for role in ("uki", "root"):
        if not any(f.role == role for f in files):
            raise RepositoryError(f"the {role} image of {build.version} is missing or has no "
                                  "checksum in SHA256SUMS")
    return OsManifest(version=build.version, architecture=build.architecture,
                      files=tuple(files))


def os_versions(repo: ModelRepository) -> list[dict[str, Any]]:
    """Every published OS version (from its signed manifest target's custom fields)."""
    rows = []
    for path, info in repo.targets().signed.targets.items():
        custom = info.custom or {}
        if path.startswith("os/") and path.endswith("/manifest.json"):
            rows.append({"version": custom.get("version"),
                         "architecture": custom.get("architecture"),
                         "target": path, "published_at": custom.get("published_at")})
    return sorted(rows, key=lambda r: str(r["published_at"]))


def publish(repo: ModelRepository, directory: Path) -> dict[str, Any]:
    """Add a checked OS version. Versions are immutable: one already published is refused."""
    manifest = check_release(directory)
    if manifest_target(manifest.version) in repo.targets().signed.targets:
        raise RepositoryError(f"OS version {manifest.version} is already published; "
                              "publish a new version instead (versions are immutable)")
    custom = {"format": OS_TARGET_FORMAT, "version": manifest.version,
              "architecture": manifest.architecture,
              "published_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}
    # A UKI or root image is read whole into memory here, as model tars are; fine for images
    # of a few hundred MiB on the hub.
    items = [(manifest.target(f), (directory / f.name).read_bytes(), custom | {"role": f.role})
             for f in manifest.files]
    body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    items.append((manifest_target(manifest.version), body, custom | {"role": "manifest"}))
    repo.add_targets(items)
    return {"version": manifest.version, "architecture": manifest.architecture,
            "target": manifest_target(manifest.version),
            "files": [f.model_dump() for f in manifest.files]}
