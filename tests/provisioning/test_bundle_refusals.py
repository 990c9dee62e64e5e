"""Bundles that must be refused: each with a clear error, and nothing changed on disk."""

import base64
import json
from pathlib import Path

import pytest

from tests.support.fleet import Appliance, Hub, cli


def tree(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def run_with(hub: Hub, state_dir: Path, bundle: Path) -> tuple[int, str]:
    proc = cli(
        "spoke",
        "run",
        "--state-dir",
        str(state_dir),
        "--bundle",
        str(bundle),
        "--trust-key",
        str(hub.trust_key),
        check=False,
    )
    return proc.returncode, proc.stderr


@pytest.fixture
def offline_hub(tmp_path: Path) -> Hub:
    """A hub home without a running hub: bundle checks happen before any network."""
    return Hub(tmp_path / "offline")


def refused(hub: Hub, tmp_path: Path, bundle: Path) -> str:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "keep.txt").write_text("the technician's file")
    before = tree(state_dir)
    code, err = run_with(hub, state_dir, bundle)
    assert code == 2
    assert tree(state_dir) == before
    assert len(err.strip().splitlines()) == 1
    return err


def test_unsigned_bundle_is_refused(offline_hub: Hub, tmp_path: Path) -> None:
    bundle = offline_hub.bundle(tmp_path / "b.spoke")
    doc = json.loads(bundle.read_text())
    del doc["signature"]
    bundle.write_text(json.dumps(doc))
    assert "not a Spoke bundle" in refused(offline_hub, tmp_path, bundle)


def test_altered_bundle_is_refused(offline_hub: Hub, tmp_path: Path) -> None:
    bundle = offline_hub.bundle(tmp_path / "b.spoke")
    doc = json.loads(bundle.read_text())
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["labels"]["site"] = "somewhere-else"
    doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    bundle.write_text(json.dumps(doc))
    assert "bad signature (the bundle was altered)" in refused(offline_hub, tmp_path, bundle)


def test_bundle_signed_by_another_key_is_refused(offline_hub: Hub, tmp_path: Path) -> None:
    other = Hub(tmp_path / "other")
    bundle = other.bundle(tmp_path / "b.spoke")
    assert "signed by another key" in refused(offline_hub, tmp_path, bundle)


def test_expired_bundle_is_refused(offline_hub: Hub, tmp_path: Path) -> None:
    bundle = offline_hub.bundle(tmp_path / "b.spoke", "--expires", "1s")
    import time

    time.sleep(1.5)
    assert "expired at" in refused(offline_hub, tmp_path, bundle)


def test_garbage_bundle_is_refused(offline_hub: Hub, tmp_path: Path) -> None:
    bundle = tmp_path / "b.spoke"
    bundle.write_bytes(b"\x00\xffnot json")
    assert "not a Spoke bundle" in refused(offline_hub, tmp_path, bundle)


def test_exhausted_bundle_is_refused_by_the_hub(
    hub: Hub, tmp_path: Path, appliances: list[Appliance]
) -> None:
    bundle = hub.bundle(tmp_path / "one.spoke", "--max-uses", "1")
    first, second = Appliance(tmp_path, hub, "first"), Appliance(tmp_path, hub, "second")
    appliances.extend([first, second])
    first.start(bundle)
    first.wait_enrolled()
    second.start(bundle)
    prov = second.wait_provisioning("enrollment-refused")
    assert "claim-exhausted" in prov["reason"]
    assert not (second.state_dir / "identity").exists()
    assert len(hub.devices()) == 1


def test_revoked_claim_is_refused_by_the_hub(
    hub: Hub, tmp_path: Path, appliance: Appliance
) -> None:
    bundle = hub.bundle(tmp_path / "b.spoke")
    (claim,) = hub.claim_ids()
    cli("spoke-hub", "bundle", "revoke", "--home", str(hub.home), claim)
    appliance.start(bundle)
    prov = appliance.wait_provisioning("enrollment-refused")
    assert "claim-revoked" in prov["reason"]
    assert not (appliance.state_dir / "identity").exists()
    assert hub.devices() == {}


def test_auto_discovered_bad_bundle_is_reported_not_fatal(offline_hub: Hub, tmp_path: Path) -> None:
    """A bad bundle on the stick: the daemon stays up and says why, for the status page."""
    a = Appliance(tmp_path, offline_hub)
    a.state_dir.mkdir(parents=True)
    other = Hub(tmp_path / "other")
    other.bundle(a.state_dir / "bundle.spoke")
    a.start()
    try:
        prov = a.wait_provisioning("bundle-refused")
        assert "signed by another key" in prov["reason"]
        assert a.process is not None and a.process.running()
    finally:
        a.kill()
