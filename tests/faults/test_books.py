"""The books' rule for the active model (tests/faults/harness.py ``verified_entry``), on a real
model store with entries signed by real device keys, and a real hub registry that records the
keys its CA certified for the device: a model the hub published, or a fine-tune the appliance
promoted and signed itself from a verified parent, with a key certified for it (also one that a
certificate renewal has since replaced), counts as verified; anything else does not."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.fsutil import write_secret
from appliance.identity import generate_key, key_to_pem, load_private_key, public_key_sha256
from daemon.delivery.store import ModelStore
from daemon.finetune.promote import build_entry, validate_entry
from provisioning.registry import Registry
from tests.delivery.conftest import make_artifact
from tests.faults.harness import certified_keys, verified_entry

DEVICE = "dev-books"


def edit(path: Path, **changes: Any) -> None:
    """Change keys of a JSON file in the store (whose files are read-only)."""
    path.chmod(0o644)
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


class Box:
    """A state directory with a device key and a real model store, and the hub's registry
    with the certificates its CA issued for that key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root / "identity" / "device.key"
        self.registry = root / "registry.db"
        self.serial = 1
        with self._hub() as registry:
            registry.add_claim("claim-1", "token", {}, time.time() + 3600, 1, self.serial)
            registry.add_device(DEVICE, "claim-1", {}, {}, self.serial)
        self._certify()
        self.store = ModelStore(root / "models")
        self.published: dict[str, str] = {}

    @contextlib.contextmanager
    def _hub(self) -> Iterator[Registry]:
        registry = Registry(self.registry)
        try:
            yield registry
        finally:
            registry.close()

    def _certify(self) -> None:
        """A new device key, and the hub's record of the certificate it issued for it."""
        write_secret(self.key, key_to_pem(generate_key()))
        public = load_private_key(self.key.read_bytes()).public_key()
        with self._hub() as registry:
            registry.add_cert(DEVICE, self.serial, public_key_sha256(public), time.time() + 86400)

    def renew(self) -> Path:
        """A certificate renewal with a new key, as the hub does it: the new certificate is
        recorded, then the older ones retired. Returns a copy of the old key."""
        old = self.root / f"old-{self.serial}.key"
        shutil.copy(self.key, old)
        self.serial += 1
        self._certify()
        with self._hub() as registry:
            registry.retire_other_certs(DEVICE, self.serial)
        return old

    def install(self, artifact: Path, parent: str, key: Path | None = None) -> str:
        """Sign ``artifact`` as a promoted fine-tune of ``parent`` and install it."""
        key = key or self.key
        work = self.root / f"work-{artifact.name}-{self.serial}"
        work.mkdir()
        tar, meta = build_entry(artifact, work, key, "job-1", parent)
        with self.store.locked():
            self.store.install(tar, meta, lambda p: validate_entry(p, meta, key))
        return str(meta["sha256"])

    def entries(self) -> list[dict[str, Any]]:
        return self.store.entries()

    def verified(self, sha: str) -> bool:
        return verified_entry(self.store.root / "store", sha, self.entries(), self.published,
                              certified_keys(self.registry, DEVICE))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("books-models")
    return {v: make_artifact(root, v, seed=i)
            for i, v in enumerate(["1.1.0", "1.1.1-ft.1", "1.1.1-ft.2"])}


@pytest.fixture
def box(tmp_path: Path, models: dict[str, Path]) -> Box:
    box = Box(tmp_path)
    # 1.1.0 stands for the hub's release: the books know its sha256 as published.
    box.published["1.1.0"] = box.install(models["1.1.0"], "none")
    return box


def test_a_model_the_hub_published_is_verified(box: Box) -> None:
    assert box.verified(box.published["1.1.0"])


def test_a_fine_tune_the_box_signed_from_a_published_parent_is_verified(
        box: Box, models: dict[str, Path]) -> None:
    assert box.verified(box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0"))


def test_a_fine_tune_of_a_verified_fine_tune_is_verified(
        box: Box, models: dict[str, Path]) -> None:
    box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0")
    assert box.verified(box.install(models["1.1.1-ft.2"], "crack-vit@1.1.1-ft.1"))


def test_a_fine_tune_signed_by_another_devices_key_is_not(
        box: Box, models: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    write_secret(other, key_to_pem(generate_key()))
    assert not box.verified(box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0", key=other))


def test_a_fine_tune_whose_card_changed_after_signing_is_not(
        box: Box, models: dict[str, Path]) -> None:
    sha = box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0")
    edit(box.store.root / "store" / sha / "card.json", note="edited")
    assert not box.verified(sha)


def test_a_fine_tune_of_an_unknown_parent_is_not(box: Box, models: dict[str, Path]) -> None:
    assert not box.verified(box.install(models["1.1.1-ft.1"], "crack-vit@0.9.0"))


def test_a_store_entry_neither_published_nor_promoted_here_is_not(
        box: Box, models: dict[str, Path]) -> None:
    sha = box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0")
    edit(box.store.root / "store" / sha / "target.json", origin="hub")
    assert not box.verified(sha)


def test_a_fine_tune_signed_before_a_certificate_renewal_is_verified(
        box: Box, models: dict[str, Path]) -> None:
    sha = box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0")
    box.renew()
    assert box.verified(sha)


def test_a_fine_tune_signed_with_the_renewed_key_is_verified(
        box: Box, models: dict[str, Path]) -> None:
    box.renew()
    assert box.verified(box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0"))


def test_a_fine_tune_signed_with_a_retired_key_after_its_retirement_is_not(
        box: Box, models: dict[str, Path]) -> None:
    old = box.renew()
    assert not box.verified(box.install(models["1.1.1-ft.1"], "crack-vit@1.1.0", key=old))
