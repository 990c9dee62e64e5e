"""The happy path against the simulated repository: resolve, download, verify, activate, gate."""

from pathlib import Path

from tests.delivery.conftest import Harness
from tests.delivery.simulator import SimulatedRepository


async def test_new_version_is_downloaded_verified_activated_and_committed(
    harness: Harness, artifacts: dict[str, Path]
) -> None:
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    assert harness.active() == "1.1.0"
    assert harness.kinds() == ["model_activated", "model_committed"]
    store = harness.service.store
    assert store.meta(store.current() or "")["version"] == "1.1.0"
    assert store.meta(store.previous() or "")["version"] == "1.0.0"
    assert harness.service.reported()["state"] == "committed"


async def test_bytes_fetched_are_the_target_plus_a_little_metadata(
    harness: Harness, artifacts: dict[str, Path]
) -> None:
    row = harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    fetched = harness.last("model_activated")["bytes_fetched"]
    assert int(row["length"]) < fetched < int(row["length"]) + 16 * 1024


async def test_root_with_two_of_three_threshold_is_trusted(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    sim = SimulatedRepository(root_keys=3, threshold=2)
    sim.publish(artifacts["1.0.0"])
    h = await Harness(tmp_path, sim).start()
    await h.desire("1.0.0")
    await h.settle()
    assert h.active() == "1.0.0"
    await h.close()


async def test_gc_keeps_the_newest_versions_and_the_previous(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    from tests.delivery.conftest import FAST

    sim = SimulatedRepository()
    h = await Harness(tmp_path, sim, FAST.model_copy(update={"keep_versions": 2})).start()
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        sim.publish(artifacts[version])
        await h.desire(version)
        await h.settle()
    store = h.service.store
    assert [m["version"] for m in store.entries()] == ["1.1.0", "2.0.0"]
    assert store.meta(store.previous() or "")["version"] == "1.1.0"
    await h.close()
