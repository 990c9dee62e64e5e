"""What hub and appliance share about OS updates: the signed manifest of an OS version, the
desired OS version, and reading a UKI's architecture.

An OS version is published as TUF targets under ``os/<version>/``: the unified kernel image
(``spoke_<version>.efi``), the gzip-compressed root file system image
(``spoke_<version>.root.raw.gz``, see ``ROOT_SUFFIX``) and
``manifest.json`` (this module's ``OsManifest``) naming both with their sha256 and length.
The desired state names the manifest; the appliance resolves every file through TUF too.
"""

from __future__ import annotations

import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_VERSION = r"^[0-9][A-Za-z0-9.+-]{0,63}$"
#: systemd's architecture names (``uname -m`` -> these) for the machines we can boot.
PE_MACHINES = {0x8664: "x86-64", 0xAA64: "arm64"}
UNAME_ARCH = {"x86_64": "x86-64", "aarch64": "arm64"}
OS_NAME = "spoke-os"
Role = Literal["uki", "root"]
#: The root image travels gzip-compressed: a root slot is 3 GiB, mostly free blocks. systemd
#: 254's sysupdate hands a url-file source to systemd-pull, which inflates xz, gzip and bzip2
#: by their magic bytes (254's does not take zstd) while it writes the slot; gzip because a TCG
#: or low-power guest inflates it several times faster than xz (docs/IMAGE.md).
ROOT_SUFFIX = ".root.raw.gz"
GZIP_MAGIC = b"\x1f\x8b"


def role_of(filename: str, version: str) -> Role | None:
    """The part a file plays, from the names the image build writes (None: not ours)."""
    if filename == f"spoke_{version}.efi":
        return "uki"
    if filename == f"spoke_{version}{ROOT_SUFFIX}":
        return "root"
    return None


class OsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^spoke_[A-Za-z0-9.+-]{1,64}\.(efi|root\.raw\.gz)$")
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    length: int = Field(gt=0)


class OsManifest(BaseModel):
    """``os/<version>/manifest.json``: signed as a TUF target like the files it names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["spoke-os/1"] = "spoke-os/1"
    version: str = Field(pattern=_VERSION)
    architecture: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    files: tuple[OsFile, ...]

    def target(self, file: OsFile) -> str:
        return f"os/{self.version}/{file.name}"


def manifest_target(version: str) -> str:
    return f"os/{version}/manifest.json"


class DesiredOs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(pattern=_VERSION)
    target: str = Field(pattern=r"^os/[0-9][A-Za-z0-9.+-]{0,63}/manifest\.json$")
    # True when the operator chose exactly this version (``==X``): a downgrade is allowed.
    pinned: bool = False


def pe_architecture(head: bytes) -> str | None:
    """The architecture a PE/COFF image (a UKI) is built for, from its first bytes, or None
    when they are not a PE image we know."""
    if len(head) < 0x40 or head[:2] != b"MZ":
        return None
    (offset,) = struct.unpack_from("<I", head, 0x3C)
    if offset + 6 > len(head) or head[offset:offset + 4] != b"PE\0\0":
        return None
    (machine,) = struct.unpack_from("<H", head, offset + 4)
    return PE_MACHINES.get(machine)
