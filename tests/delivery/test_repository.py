"""The hub's TUF repository: what it signs, how it refreshes, what it refuses."""

import datetime as dt
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from appliance.config import RepositorySection
from provisioning import repository
from provisioning.repository import RepositoryError
from tests.delivery.simulator import SimulatedRepository


def test_root_threshold_two_of_three_needs_two_signatures():
    sim = SimulatedRepository(root_keys=3, threshold=2)
    root = Metadata[Root].from_bytes(sim.root)
    assert root.signed.roles["root"].threshold == 2
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    one = dict(list(root.signatures.items())[:1])
    with pytest.raises(UnsignedMetadataError, match="signed by 1/2 keys"):
        root.signed.verify_delegate("root", root.signed_bytes, one)


def test_consistent_snapshots_are_on():
    assert Metadata[Root].from_bytes(SimulatedRepository().root).signed.consistent_snapshot


def test_timestamp_is_re_signed_past_half_its_lifetime():
    sim = SimulatedRepository()
    before = sim.repo.timestamp().signed.version
    assert sim.repo.refresh() == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=13)
    assert sim.repo.refresh(later) == ["timestamp"]
    assert sim.repo.timestamp().signed.version == before + 1


def test_a_published_version_is_immutable(artifacts: dict[str, Path], tmp_path: Path):
    import shutil

    sim = SimulatedRepository()
    sim.publish(artifacts["1.0.0"])
    again = sim.publish(artifacts["1.0.0"])  # same bytes: a no-op
    assert again["version"] == "1.0.0"
    other = tmp_path / "other"
    shutil.copytree(artifacts["1.1.0"], other)
    card = (other / "card.json").read_text().replace('"1.1.0"', '"1.0.0"')
    (other / "card.json").write_text(card)
    with pytest.raises(RepositoryError, match="immutable"):
        sim.publish(other)


def test_online_keys_never_include_the_root_keys(tmp_path: Path):
    paths = repository.init_repository(tmp_path / "repo", tmp_path / "offline",
                                       RepositorySection(), 3, 2)
    assert len(paths) == 3 and all(p.parent == tmp_path / "offline" for p in paths)
    assert sorted(p.name for p in (tmp_path / "repo" / "keys").iterdir()) == [
        "snapshot.pem", "targets.pem", "timestamp.pem"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in paths)
    with pytest.raises(RepositoryError, match="already"):
        repository.init_repository(tmp_path / "repo", tmp_path / "offline",
                                   RepositorySection(), 1, 1)


async def test_appliance_follows_a_root_rotation_of_a_compromised_targets_key(
    tmp_path: Path, artifacts: dict[str, Path]
):
    from provisioning.repository import new_signer
    from tests.delivery.conftest import Harness

    sim = SimulatedRepository(root_keys=3, threshold=2)
    sim.publish(artifacts["1.0.0"])
    h = await Harness(tmp_path, sim).start()  # pins root v1
    await h.desire("1.0.0")
    await h.settle()
    old_targets_key = sim.repo.online["targets"]
    assert sim.repo.rotate_root(sim.root_signers[:2], {"targets": new_signer()}) == 2
    sim.publish(artifacts["1.1.0"])
    await h.desire("1.1.0")
    await h.settle()
    assert h.active() == "1.1.0"

    # Whoever stole the old targets key can no longer sign targets the appliance accepts.
    sim.repo.online["targets"] = old_targets_key
    sim.publish(artifacts["2.0.0"])
    await h.desire("2.0.0")
    await h.settle()
    assert h.last("model_refused")["code"] == "bad-signature"
    assert h.active() == "1.1.0"
    await h.close()


def test_root_rotation_needs_the_threshold_of_offline_keys():
    from provisioning.repository import new_signer

    sim = SimulatedRepository(root_keys=3, threshold=2)
    with pytest.raises(RepositoryError, match="not enough root keys"):
        sim.repo.rotate_root(sim.root_signers[:1], {"targets": new_signer()})
    assert Metadata[Root].from_bytes(sim.root).signed.version == 1
