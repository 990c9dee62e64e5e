"""`spoke-hub os publish`: OS versions as TUF targets in the models' signed repository, and
every refusal leaving the repository as it was."""

import hashlib
import json
import time
from pathlib import Path

import pytest

from appliance.config import RepositorySection
from appliance.osupdate import OsManifest
from provisioning import repository
from tests.provisioning.test_hub_cli import init
from tests.support.fleet import cli
from tests.support.osrelease import make_release


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    init(home)
    return home


def publish(home: Path, directory: Path, check: bool = True):  # type: ignore[no-untyped-def]
    return cli("spoke-hub", "os", "publish", "--home", str(home), str(directory), "--json",
               check=check)


def repo_of(home: Path) -> repository.ModelRepository:
    return repository.open_repository(home / "repository", RepositorySection())


def targets_version(home: Path) -> int:
    return repo_of(home).targets().signed.version


def test_publish_adds_manifest_uki_and_root_as_signed_targets(home: Path, tmp_path: Path):
    rel = make_release(tmp_path / "v2", "2")
    row = json.loads(publish(home, rel).stdout)
    assert row["target"] == "os/2/manifest.json"
    targets = repo_of(home).targets().signed.targets
    assert set(targets) >= {"os/2/manifest.json", "os/2/spoke_2.efi", "os/2/spoke_2.root.raw.gz"}
    # What is signed is what travels: the compressed image, its hash and length.
    root = (rel / "spoke_2.root.raw.gz").read_bytes()
    assert targets["os/2/spoke_2.root.raw.gz"].length == len(root)
    assert targets["os/2/spoke_2.root.raw.gz"].hashes["sha256"] == hashlib.sha256(root).hexdigest()
    stored = home / "repository" / "public" / "targets" / "os" / "2"
    manifest_info = targets["os/2/manifest.json"]
    body = (stored / f"{manifest_info.hashes['sha256']}.manifest.json").read_bytes()
    manifest = OsManifest.model_validate_json(body)
    assert (manifest.version, manifest.architecture) == ("2", "x86-64")
    assert {f.role for f in manifest.files} == {"uki", "root"}


def test_os_targets_are_not_listed_as_models(home: Path, tmp_path: Path):
    publish(home, make_release(tmp_path / "v2", "2"))
    assert repo_of(home).models() == []
    listed = json.loads(cli("spoke-hub", "os", "list", "--home", str(home), "--json").stdout)
    assert [r["version"] for r in listed] == ["2"]


def test_a_uki_for_another_architecture_is_refused(home: Path, tmp_path: Path):
    publish(home, make_release(tmp_path / "v1", "1"))
    before = targets_version(home)
    proc = publish(home, make_release(tmp_path / "v2", "2", uki_arch="arm64"), check=False)
    assert proc.returncode != 0 and "UKI for arm64" in proc.stderr
    assert targets_version(home) == before


def test_an_unknown_architecture_is_refused(home: Path, tmp_path: Path):
    rel = make_release(tmp_path / "v2", "2")
    (rel / "manifest.json").write_text(json.dumps({"version": "2", "architecture": "mips"}))
    proc = publish(home, rel, check=False)
    assert proc.returncode != 0 and "architecture 'mips'" in proc.stderr


def test_a_mismatched_checksum_is_refused(home: Path, tmp_path: Path):
    publish(home, make_release(tmp_path / "v1", "1"))
    before = targets_version(home)
    rel = make_release(tmp_path / "v2", "2")
    with (rel / "spoke_2.root.raw.gz").open("r+b") as f:
        f.write(b"X")
    proc = publish(home, rel, check=False)
    assert proc.returncode != 0 and "does not match SHA256SUMS" in proc.stderr
    assert targets_version(home) == before
    assert "os/2/manifest.json" not in repo_of(home).targets().signed.targets


def test_an_uncompressed_root_image_is_refused(home: Path, tmp_path: Path):
    """systemd-pull would write it into the slot as it is, so it never gets signed."""
    rel = make_release(tmp_path / "v2", "2")
    raw = rel / "spoke_2.root.raw.gz"
    raw.write_bytes(b"an ext4 image that was never compressed" * 100)
    sums = [line for line in (rel / "SHA256SUMS").read_text().splitlines() if ".gz" not in line]
    sums.append(f"{hashlib.sha256(raw.read_bytes()).hexdigest()}  {raw.name}")
    (rel / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    proc = publish(home, rel, check=False)
    assert proc.returncode != 0 and "spoke_2.root.raw.gz is not gzip-compressed" in proc.stderr
    assert "os/2/manifest.json" not in repo_of(home).targets().signed.targets


def test_a_missing_checksum_is_refused(home: Path, tmp_path: Path):
    rel = make_release(tmp_path / "v2", "2")
    lines = (rel / "SHA256SUMS").read_text().splitlines()
    (rel / "SHA256SUMS").write_text("\n".join(line for line in lines if ".efi" not in line))
    proc = publish(home, rel, check=False)
    assert proc.returncode != 0 and "uki image of 2 is missing" in proc.stderr


def test_a_missing_checksum_file_is_refused(home: Path, tmp_path: Path):
    rel = make_release(tmp_path / "v2", "2")
    (rel / "SHA256SUMS").unlink()
    proc = publish(home, rel, check=False)
    assert proc.returncode != 0 and "SHA256SUMS is missing" in proc.stderr


def test_a_version_already_published_is_refused_and_kept(home: Path, tmp_path: Path):
    publish(home, make_release(tmp_path / "a", "2"))
    first = repo_of(home).targets().signed.targets["os/2/spoke_2.root.raw.gz"].hashes
    before = targets_version(home)
    proc = publish(home, make_release(tmp_path / "b", "2", root=b"other bytes" * 100),
                   check=False)
    assert proc.returncode != 0 and "already published" in proc.stderr
    assert targets_version(home) == before
    assert repo_of(home).targets().signed.targets["os/2/spoke_2.root.raw.gz"].hashes == first


def test_spoke_hub_devices_shows_the_running_os_and_a_rollback_with_its_reason(home: Path):
    from provisioning.home import HubHome
    from provisioning.registry import open_registry

    registry = open_registry(HubHome(home))
    registry.add_claim("c1", "token", {}, time.time() + 3600, 100, 1)
    registry.add_device("dev0", "c1", {"site": "b1"}, {"cpu_count": 4}, 10)
    reason = "rolled back: spoke-health failed: hub unreachable for 300 s"
    registry.set_state("dev0", {"os": {
        "name": "spoke-os", "version": "2", "slot": "spoke_2", "state": "committed",
        "last_update": {"version": "3", "outcome": "rolled-back", "reason": reason,
                        "code": "rolled-back", "ts": time.time()}}})
    registry.close()
    rows = json.loads(cli("spoke-hub", "devices", "--home", str(home), "--json").stdout)
    assert rows[0]["os_image"] == f"2 (spoke_2); 3 rolled-back: {reason}"
    table = cli("spoke-hub", "devices", "--home", str(home)).stdout
    assert "2 (spoke_2); 3 rolled-back" in table


def test_policy_show_gives_each_device_its_desired_os_version(home: Path, tmp_path: Path):
    from provisioning.home import HubHome
    from provisioning.registry import open_registry

    publish(home, make_release(tmp_path / "v2", "2"))
    publish(home, make_release(tmp_path / "v3", "3"))
    registry = open_registry(HubHome(home))
    registry.add_claim("c1", "token", {}, time.time() + 3600, 100, 1)
    registry.add_device("dev0", "c1", {"site": "b1"}, {"cpu_count": 4}, 10)
    registry.close()
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nselector = "site=b1"\nmodel = "m"\nos_version = "<3"\n')
    cli("spoke-hub", "policy", "apply", "--home", str(home), str(policy))
    rows = json.loads(cli("spoke-hub", "policy", "show", "--home", str(home), "--json").stdout)
    assert [(r["device"], r["desired_os"]) for r in rows] == [("dev0", "2")]
