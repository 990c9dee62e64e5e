"""Seal and unseal a small secret with a TPM 2.0, through tpm2-tools.

The secret goes into a TPM *sealed data object* under a primary key of the owner hierarchy.
The primary is derived from the TPM's own seed each time (never stored), so the two blobs we
keep (the object's public and TPM-encrypted private part) open only inside the TPM that made
them: a copy of the disk in another box, or another TPM, gets "integrity check failed".

The object is bound to that TPM alone, not to PCRs (boot state), so a firmware or boot update
in the field does not strand the device's identity.

``tcti`` names the TPM the way tpm2-tools do (``device:/dev/tpmrm0``,
``swtpm:host=127.0.0.1,port=2321``); empty means the tools' default (the TPM resource manager).
"""

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import IdentityError

# A sealed data object holds at most 128 bytes (TPM2 MAX_SYM_DATA).
MAX_SECRET = 128
BLOB_FORMAT = "spoke-tpm-sealed-1"
TOOLS = ("tpm2_createprimary", "tpm2_create", "tpm2_load", "tpm2_unseal", "tpm2_flushcontext",
         "tpm2_getrandom")
TIMEOUT_S = 30.0
SLOTS_FULL = "out of memory for object contexts"
SLOT_RETRIES = 3
#: Where the cross-process TPM lock lives: /run/lock survives a unit's PrivateTmp.
LOCK_DIRS = (Path("/run/lock"), Path(tempfile.gettempdir()))


def tools_missing() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def present(tcti: str) -> bool:
    """A TPM is there to use: the tools are installed and either a TPM was named or the kernel
    offers its resource manager."""
    return not tools_missing() and (bool(tcti) or Path("/dev/tpmrm0").exists())


def unusable(tcti: str) -> str | None:
    """Why the TPM cannot be used (e.g. no permission on /dev/tpmrm0), or None if it answers."""
    try:
        _run(tcti, ["tpm2_getrandom", "--hex", "8"])
    except IdentityError as exc:
        return str(exc)
    return None


def _run(tcti: str, argv: list[str], stdin: bytes = b"", cwd: str | None = None) -> bytes:
    env = dict(os.environ)
    if tcti:
        env["TPM2TOOLS_TCTI"] = tcti
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise IdentityError(f"{argv[0]} is missing: install tpm2-tools") from exc
    except subprocess.TimeoutExpired as exc:
        raise IdentityError(f"the TPM did not answer {argv[0]} within {TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        # The TPM's own reason (e.g. "tpm:parameter(1):integrity check failed") says most.
        reason = [line for line in lines if "tpm:" in line] or lines[-1:] or [str(done.returncode)]
        raise IdentityError(f"{argv[0]} failed: {reason[-1]}")
    return done.stdout


@contextlib.contextmanager
def _exclusive(tcti: str) -> Iterator[None]:
    """Hold this TPM for our processes alone while one sequence runs.

    Without a resource manager (a raw TPM, or a simulator's socket) every client sees every
    transient object, so one process's ``tpm2_flushcontext -t`` flushes the primary another
    process has just made, which then fails with "not loaded" (seen in CI: the daemon renewing
    while ``spoke`` read the key). Behind /dev/tpmrm0 the lock only costs a few milliseconds.
    """
    name = f"spoke-tpm-{hashlib.sha256(tcti.encode()).hexdigest()[:16]}.lock"
    folder = next((d for d in LOCK_DIRS if d.is_dir() and os.access(d, os.W_OK)), LOCK_DIRS[-1])
    # Read-only is enough for flock, so a lock file another user made still opens (without
    # O_CREAT: protected_regular refuses O_CREAT on another user's file in a sticky folder).
    try:
        fd = os.open(folder / name, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(folder / name, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _with_primary(tcti: str, work: str, then: list[list[str]], stdin: bytes = b"") -> bytes:
    """Create the owner primary, then run ``then`` against it; each step's objects are flushed
    after it (the tools keep them as saved contexts in ``work``, reloaded by the next step).

    Behind a resource manager each tool's objects go when it exits; straight on a TPM (or a
    simulator) they would stay and fill its three transient slots, hence the flushes, and a
    step that found the slots full (objects some other program left loaded) is run again once
    they are flushed. Our own processes take turns (``_exclusive``).
    """
    out = b""
    with _exclusive(tcti):
        for argv in [["tpm2_createprimary", "-Q", "-C", "o", "-c", "primary.ctx"], *then]:
            for attempt in range(SLOT_RETRIES + 1):
                try:
                    out = _run(tcti, argv, stdin if argv[0] == "tpm2_create" else b"", cwd=work)
                    break
                except IdentityError as exc:
                    if SLOTS_FULL not in str(exc) or attempt == SLOT_RETRIES:
                        raise
                finally:
                    # Nothing to flush, or the TPM is gone: the error that matters is the step's.
                    with contextlib.suppress(IdentityError):
                        _run(tcti, ["tpm2_flushcontext", "-t"], cwd=work)
    return out


def seal(secret: bytes, tcti: str) -> bytes:
    """The blob (JSON) that only this TPM can open back into ``secret``."""
    if not 0 < len(secret) <= MAX_SECRET:
        raise IdentityError(f"a sealed secret is 1 to {MAX_SECRET} bytes, not {len(secret)}")
    with tempfile.TemporaryDirectory(prefix="spoke-tpm-") as work:
        _with_primary(tcti, work, [[
            "tpm2_create", "-Q", "-C", "primary.ctx", "-i", "-",
            "-u", "seal.pub", "-r", "seal.priv",
            "-a", "fixedtpm|fixedparent|userwithauth",
        ]], stdin=secret)
        parts = {name: base64.b64encode((Path(work) / f"seal.{name}").read_bytes()).decode()
                 for name in ("pub", "priv")}
    return json.dumps({"format": BLOB_FORMAT, "public": parts["pub"],
                       "private": parts["priv"]}).encode()


def unseal(blob: bytes, tcti: str) -> bytes:
    """The secret inside ``blob``; IdentityError if this TPM did not seal it."""
    try:
        doc = json.loads(blob)
        if doc.get("format") != BLOB_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        public = base64.b64decode(doc["public"], validate=True)
        private = base64.b64decode(doc["private"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IdentityError(f"not a TPM-sealed key blob: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="spoke-tpm-") as work:
        (Path(work) / "seal.pub").write_bytes(public)
        (Path(work) / "seal.priv").write_bytes(private)
        try:
            return _with_primary(tcti, work, [
                ["tpm2_load", "-Q", "-C", "primary.ctx", "-u", "seal.pub", "-r", "seal.priv",
                 "-c", "seal.ctx"],
                ["tpm2_unseal", "-c", "seal.ctx"],
            ])
        except IdentityError as exc:
            if str(exc).startswith("tpm2_load"):
                raise IdentityError(
                    "the device key is sealed by another TPM (was this disk moved from "
                    f"another box?): {exc}"
                ) from exc
            raise
