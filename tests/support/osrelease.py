"""OS update artefacts as ``make image`` lays them out, small enough for tests: a UKI that is
a real PE/COFF header (so its architecture reads for real) and a root image of given bytes,
gzip-compressed as image/build.sh writes it."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

MACHINES = {"x86-64": 0x8664, "arm64": 0xAA64}


def pe_image(machine: int, size: int = 8192) -> bytes:
    """An MZ stub pointing at a PE header for ``machine``, padded to ``size``."""
    head = bytearray(b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40))
    head += b"PE\0\0" + struct.pack("<H", machine) + b"\0" * 18
    return bytes(head) + bytes(size - len(head))


def make_release(out: Path, version: str, arch: str = "x86-64", uki_arch: str | None = None,
                 root: bytes | None = None) -> Path:
    """Write manifest.json, the UKI, the root image (``root``, compressed) and SHA256SUMS
    into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    root = root if root is not None else f"root file system of {version}\n".encode() * 4096
    files = {
        f"spoke_{version}.efi": pe_image(MACHINES[uki_arch or arch]),
        f"spoke_{version}.root.raw.gz": gzip.compress(root, mtime=0),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()))
    (out / "manifest.json").write_text(json.dumps({"version": version, "architecture": arch}))
    return out
