"""Where a device keeps its private key at rest: sealed by its TPM, or a 0600 file.

- ``tpm``: the key file is ``device.key.tpm``, a blob only this box's TPM opens
  (appliance/tpm.py). The clear key exists only in the daemon's memory; TLS stacks that want
  a path read it from a memfd (``/proc/self/fd/N``), which is never on disk.
- ``file``: ``device.key``, a PEM file with mode 0600, on boxes without a TPM.

How a key was kept is read from the directory, not from config, so an identity sealed earlier
stays usable; the store's ``kind`` says only how *new* keys (enrollment, renewal) are kept.
See docs/IDENTITY.md for why the key is sealed rather than used inside the TPM.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec

from appliance import identity, tpm
from appliance.errors import IdentityError
from appliance.fsutil import write_secret

KeyKind = Literal["tpm", "file"]
FILE_NAME = "device.key"
SEALED_NAME = "device.key.tpm"
SCALAR_BYTES = 32  # EC P-256

log = logging.getLogger(__name__)


def kind_in(directory: Path) -> KeyKind | None:
    """How the key in ``directory`` is kept, or None if there is none."""
    if (directory / SEALED_NAME).exists():
        return "tpm"
    if (directory / FILE_NAME).exists():
        return "file"
    return None


@dataclass(frozen=True)
class KeyStore:
    kind: KeyKind = "file"
    tpm_device: str = ""
    # memfd per sealed blob read (path, mtime, size): unsealed once, not on every TLS context.
    _opened: dict[tuple[str, int, int], Path] = field(
        default_factory=dict, compare=False, repr=False
    )

    def save(self, directory: Path, key: identity.PrivateKey) -> None:
        """Keep ``key`` in ``directory`` the way new keys are kept (replacing the other kind)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.kind == "tpm":
            scalar = key.private_numbers().private_value.to_bytes(SCALAR_BYTES, "big")
            write_secret(directory / SEALED_NAME, tpm.seal(scalar, self.tpm_device))
            (directory / FILE_NAME).unlink(missing_ok=True)
        else:
            write_secret(directory / FILE_NAME, identity.key_to_pem(key))
            (directory / SEALED_NAME).unlink(missing_ok=True)

    def load(self, directory: Path) -> identity.PrivateKey:
        """The key kept in ``directory``; IdentityError if it is missing or will not open."""
        kind = kind_in(directory)
        if kind == "file":
            return identity.load_private_key((directory / FILE_NAME).read_bytes())
        if kind is None:
            raise IdentityError(f"no device key in {directory}")
        scalar = tpm.unseal((directory / SEALED_NAME).read_bytes(), self.tpm_device)
        if len(scalar) != SCALAR_BYTES:
            raise IdentityError(f"the TPM-sealed key in {directory} is not a P-256 key")
        return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())

    def tls_path(self, directory: Path) -> Path:
        """A path ssl's ``load_cert_chain`` can read the key from: the file itself, or for a
        sealed key a memfd holding the PEM (memory only, this process only)."""
        if kind_in(directory) != "tpm":
            return directory / FILE_NAME
        sealed = directory / SEALED_NAME
        st = sealed.stat()
        cache_key = (str(sealed), st.st_mtime_ns, st.st_size)
        if cache_key not in self._opened:
            pem = identity.key_to_pem(self.load(directory))
            fd = os.memfd_create("spoke-device-key")  # close-on-exec: children never see it
            os.write(fd, pem)
            self._opened[cache_key] = Path(f"/proc/self/fd/{fd}")
        return self._opened[cache_key]


def choose(want: Literal["auto", "tpm", "file"], tpm_device: str) -> KeyStore:
    """``auto``: the TPM where the box has one that answers (tools installed, a TPM named or
    present); one that is there but refuses (permissions, a broken chip) is logged, and the
    key is a file rather than no identity at all."""
    if want == "auto":
        why = tpm.unusable(tpm_device) if tpm.present(tpm_device) else "no TPM"
        if why is not None and why != "no TPM":
            log.warning("TPM present but not usable; keeping the key in a file",
                        extra={"reason": why})
        want = "file" if why else "tpm"
    if want == "tpm" and tpm.tools_missing():
        raise IdentityError(
            f"[hub] key_store = \"tpm\" needs tpm2-tools ({', '.join(tpm.tools_missing())} "
            "missing): install it, or set key_store = \"file\""
        )
    return KeyStore(kind=want, tpm_device=tpm_device)
