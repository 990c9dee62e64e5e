"""Promotion of a fine-tuned candidate: a signed local artifact, activated like a delivered one.

1. the candidate directory is packed as a tar, exactly like a repository target;
2. the device key (``STATE/identity/device.key``, EC P-256) signs a statement naming the model,
   its version, its parent, the tar's and the card's sha256 and the job: the store entry's
   ``target.json`` carries it, so anyone can tell a site-made model from a hub-signed one and
   check who made it;
3. it is installed content-addressed in the model store (validated before it becomes visible,
   signature checked against the device's public key);
4. ``ModelService.activate_local`` activates it through the same path as a pulled model: smoke
   test, atomic symlink swap, health gate, automatic rollback.

The version is the parent's with the patch bumped and a local pre-release suffix
(``1.2.0`` -> ``1.2.1-ft.1``; ``1.2.1-ft.1`` -> ``1.2.1-ft.2``): above its parent, below the
hub's next real release, so a hub release supersedes it by the usual rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import DataError, IdentityError
from appliance.finetune import JobResult
from appliance.fsutil import sha256_file as sha256_of
from appliance.identity import device_id_for, load_private_key

if TYPE_CHECKING:
    from daemon.delivery.service import ModelService

ALGORITHM = "ecdsa-p256-sha256"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


class PromotionRefused(DataError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def next_version(parent: str, taken: Iterable[str] = ()) -> str:
    m = _VERSION.match(parent)
    if m is None:
        raise DataError(f"parent version {parent!r} is not a semantic version")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    n = 1
    if pre and (local := re.fullmatch(r"ft\.(\d+)", pre)):
        n = int(local[1]) + 1  # a fine-tune of a fine-tune: same release line
    else:
        patch += 1
    used = set(taken)
    while f"{major}.{minor}.{patch}-ft.{n}" in used:
        n += 1
    return f"{major}.{minor}.{patch}-ft.{n}"


def canonical(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_statement(key_pem: bytes, statement: dict[str, Any]) -> dict[str, Any]:
    key = load_private_key(key_pem)
    sig = key.sign(canonical(statement), ec.ECDSA(hashes.SHA256()))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"algorithm": ALGORITHM, "signer": device_id_for(key.public_key()),
            "public_key": public, "statement": statement,
            "signature": base64.b64encode(sig).decode()}


def verify_signed(signed: dict[str, Any], public_pem: bytes | None = None) -> dict[str, Any]:
    """The statement, if the signature verifies with ``public_pem`` (default: the key the
    record names, which must then still match its ``signer`` device id)."""
    try:
        pem = public_pem or str(signed["public_key"]).encode()
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError("the signing key is not an EC key")
        if public_pem is None and device_id_for(key) != signed["signer"]:
            raise IdentityError("the signing key does not belong to the named device")
        key.verify(base64.b64decode(signed["signature"], validate=True),
                   canonical(signed["statement"]), ec.ECDSA(hashes.SHA256()))
    except (KeyError, TypeError, ValueError, InvalidSignature) as exc:
        raise IdentityError(f"the local model's signature does not verify: {exc!r}") from exc
    statement: dict[str, Any] = signed["statement"]
    return statement


def build_entry(candidate: Path, work: Path, key_path: Path, job_id: str,
                parent: str) -> tuple[Path, dict[str, Any]]:
    """Pack and sign the candidate: (tar path, the store entry's ``target.json``)."""
    from models.artifact import pack_artifact, read_card

    try:
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise PromotionRefused(
            "no-device-key", f"no device key at {key_path} ({exc.strerror}): a fine-tuned "
            "model is signed by the device key, which exists once the appliance is enrolled"
        ) from exc
    card = read_card(candidate)
    tar = work / "candidate.tar"
    with tar.open("wb") as f:
        pack_artifact(candidate, f)
    sha = sha256_of(tar)
    statement = {
        "name": card.name, "version": card.version, "parent": parent, "sha256": sha,
        "card_sha256": sha256_of(candidate / "card.json"), "job": job_id,
        "made_at": round(time.time(), 3), "origin": "finetune",
    }
    signed = sign_statement(key_pem, statement)
    meta = {
        "sha256": sha, "length": tar.stat().st_size,
        "target": f"local/{card.name}-{card.version}.tar", "name": card.name,
        "version": card.version, "card_sha256": statement["card_sha256"],
        "installed_at": time.time(), "origin": "finetune", "parent": parent, "job": job_id,
        "signed": signed,
    }
    return tar, meta


def validate_entry(path: Path, meta: dict[str, Any], key_path: Path) -> None:
    """What the store checks before a local entry becomes visible: a valid artifact whose card
    is the signed one, signed by this device's own key."""
    from daemon.delivery.service import validate_artifact

    key = load_private_key(key_path.read_bytes())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    statement = verify_signed(meta["signed"], public)
    if (statement["sha256"], statement["card_sha256"]) != (meta["sha256"], meta["card_sha256"]):
        raise IdentityError("the store entry is not the one the device signed")
    validate_artifact(path, meta)


class Promoter:
    """Puts a fine-tuned candidate into service: signed by the device key, installed in the
    model store and activated through ``ModelService`` like a delivered model, whose health
    gate then decides whether it stays. ``models`` is None for a daemon serving a fixed
    ``--model`` (nothing can be promoted there)."""

    def __init__(self, models: ModelService | None,
                 device_key: Callable[[], Path] | None) -> None:
        self.models = models
        self.device_key = device_key

    async def promote(self, job_id: str, job_dir: Path, result: JobResult,
                      override: bool = False) -> dict[str, Any]:
        """The promotion's outcome: ``activated`` (with version, sha256, signer), ``refused``
        (code, reason) or ``not-promoted`` (reason). ``override``: a person chose to promote a
        candidate the gate kept back."""
        if not result.comparison.promote and not override:
            return {"state": "not-promoted", "reason": "; ".join(result.comparison.reasons)}
        if self.models is None:
            return {"state": "not-promoted", "version": result.version,
                    "reason": "this daemon serves a fixed --model: promotion needs the model "
                              "store (the candidate is kept in " + str(job_dir) + ")"}
        current = self.models.manager.current()
        if current is None or f"{current.name}@{current.version}" != result.parent:
            return {"state": "not-promoted", "reason": "the active model changed during the "
                    "job; the candidate was measured against " + result.parent}
        from daemon.delivery.errors import ModelRefused

        assert self.device_key is not None
        key = self.device_key()
        store = self.models.store
        try:
            assert result.candidate is not None  # exported when the gate passed or on override
            tar, meta = await asyncio.to_thread(
                build_entry, Path(result.candidate), job_dir, key, job_id, result.parent)

            def install() -> None:
                with store.locked():
                    store.install(tar, meta, lambda p: validate_entry(p, meta, key))

            await asyncio.to_thread(install)
            await self.models.activate_local(meta["sha256"], f"fine-tune {job_id}")
        except PromotionRefused as exc:
            return {"state": "refused", "code": exc.code, "reason": exc.reason}
        except ModelRefused as exc:
            return {"state": "refused", "code": exc.code, "reason": exc.reason}
        except (DataError, OSError) as exc:
            return {"state": "refused", "code": "install", "reason": str(exc)}
        return {"state": "activated", "version": meta["version"], "sha256": meta["sha256"],
                "signer": meta["signed"]["signer"],
                "reason": "activated; the health gate decides whether it stays"}

    async def kept(self, sha: str) -> bool:
        """Wait for the health gate's verdict on the promoted model ``sha``: committed or not."""
        assert self.models is not None
        await self.models.gate_closed()
        return self.models.store.journal().committed == sha

