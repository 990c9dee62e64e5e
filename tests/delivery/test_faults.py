"""Faults during delivery and after activation: the active model stays verified and serving."""

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from daemon.delivery.manager import LoadedModel
from daemon.delivery.service import prepare_model
from tests.delivery.conftest import FAST, Harness
from tests.delivery.simulator import SimulatedRepository
from tests.support.tmpfs import tmpfs


async def test_hub_unreachable_mid_download_resumes_later(
    harness: Harness, artifacts: dict[str, Path]
):
    sim = harness.sim
    row = sim.publish(artifacts["1.1.0"])
    rel = sim.target_rel(row)
    half = int(row["length"]) // 2
    sim.cut_after[rel] = half
    await harness.desire("1.1.0")
    await harness.settle()
    assert harness.last("model_interrupted")["code"] == "hub-unreachable"
    assert harness.active() == "1.0.0"
    assert harness.service.store.partial(str(row["sha256"])).stat().st_size == half
    del sim.cut_after[rel]
    await harness.settle()
    assert harness.active() == "1.1.0"
    offsets = [offset for r, offset in sim.requests if r == rel]
    assert offsets == [0, half]  # the second attempt asked only for the rest


async def test_disk_full_during_download_leaves_the_active_model(
    harness: Harness, artifacts: dict[str, Path]
):
    """A real full filesystem: a 64 KiB tmpfs mounted on the downloads directory (root only)."""
    sim = harness.sim
    row = sim.publish(artifacts["1.1.0"])
    downloads = harness.service.store.downloads
    with tmpfs(downloads, "64k"):
        assert int(row["length"]) > 64 * 1024
        await harness.desire("1.1.0")
        await harness.settle()
        assert harness.last("model_interrupted")["code"] == "disk-full"
        assert harness.active() == "1.0.0"
        assert list(downloads.iterdir()) == []  # the partial file was removed to free space


async def test_model_whose_smoke_test_fails_is_refused(
    harness: Harness, artifacts: dict[str, Path], tmp_path: Path
):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifacts["1.1.0"], bad)
    card = json.loads((bad / "card.json").read_text())
    card["golden"]["expected"] = [[1.0 - v for v in row] for row in card["golden"]["expected"]]
    (bad / "card.json").write_text(json.dumps(card))
    harness.sim.publish(bad)
    await harness.desire("1.1.0")
    await harness.settle()
    assert harness.last("model_refused")["code"] == "smoke-test"
    assert harness.active() == "1.0.0"
    # Refused for good: the next pass does not try the same signed bytes again.
    harness.events.clear()
    await harness.settle()
    assert harness.events == []


class _Broken:
    """A backend that passed its smoke test and then fails every inference."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict[str, Any]:
        return dict(self.inner.describe())


def _prepare_breaking(version: str):
    def prepare(path: Path, backend: str, artifact: Any = None) -> LoadedModel:
        model = prepare_model(path, backend, artifact)
        if model.version == version:
            model.backend = _Broken(model.backend)
        return model

    return prepare


GATE_WAITS = FAST.model_copy(update={"gate_quiet_s": 30.0})


async def on_probation(
    tmp_path: Path, artifacts: dict[str, Path], prepare: Any = prepare_model
) -> Harness:
    """A reconciler that committed 1.0.0 and now serves 1.1.0 on its health gate."""
    sim = SimulatedRepository()
    sim.publish(artifacts["1.0.0"])
    h = await Harness(tmp_path, sim, GATE_WAITS, prepare=prepare).start()
    await h.desire("1.0.0")
    await h.service.reconcile()
    h.service.gate.good = 99  # let 1.0.0 through at once
    await h.settle()
    sim.publish(artifacts["1.1.0"])
    await h.desire("1.1.0")
    await h.service.reconcile()
    assert h.active() == "1.1.0" and h.service.gate is not None
    return h


async def fail_one_inference(h: Harness) -> None:
    """One inference through the lease that fails, then the gate's verdict."""
    batch = h.service.manager.current().artifact.golden_batch()
    with contextlib.suppress(RuntimeError), h.service.manager.lease() as m:
        m.backend.infer(batch)
    await h.settle()


async def test_model_failing_the_health_gate_is_rolled_back(
    tmp_path: Path, artifacts: dict[str, Path]
):
    h = await on_probation(tmp_path, artifacts, _prepare_breaking("1.1.0"))
    await fail_one_inference(h)
    assert h.active() == "1.0.0"
    event = h.last("model_rolled_back")
    assert event["code"] == "health-gate" and "illegal memory access" in event["reason"]
    store = h.service.store
    assert store.meta(store.current() or "")["version"] == "1.0.0"
    await h.close()


async def test_a_rollback_names_the_model_that_failed_when_a_new_desired_state_arrives_meanwhile(
    tmp_path: Path, artifacts: dict[str, Path]
):
    """After a restart mid-gate the previous model is no longer in memory, so a rollback
    loads it again from the store (in a worker thread). The hub's next desired state arrives
    meanwhile: the refusal still names, and refuses for good, the model that failed."""
    first = await on_probation(tmp_path, artifacts)
    await first.close()  # a clean stop mid-gate: the next start resumes the gate

    loop = asyncio.get_running_loop()
    breaking = _prepare_breaking("1.1.0")
    desired_meanwhile: list[str] = []

    def prepare(path: Path, backend: str, artifact: Any = None) -> LoadedModel:
        model = breaking(path, backend, artifact)
        if model.version == "1.0.0" and not desired_meanwhile:
            desired_meanwhile.append("2.0.0")
            asyncio.run_coroutine_threadsafe(second.desire("2.0.0"), loop).result()
        return model

    second = await Harness(tmp_path, first.sim, GATE_WAITS, prepare=prepare).start()
    assert second.active() == "1.1.0" and second.service.gate is not None
    await fail_one_inference(second)
    assert desired_meanwhile == ["2.0.0"] and second.active() == "1.0.0"
    event = second.last("model_rolled_back")
    assert (event["name"], event["version"]) == ("crack-vit", "1.1.0")
    journal = second.service.store.journal()
    assert journal.desired_model is not None and journal.desired_model.version == "2.0.0"
    failed = journal.refused[event["sha256"]]
    assert failed.desired is not None and failed.desired.version == "1.1.0"
    await second.close()


async def test_downgrade_is_refused_unless_pinned(harness: Harness, artifacts: dict[str, Path]):
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    await harness.desire("1.0.0")
    await harness.settle()
    assert harness.last("model_refused")["code"] == "downgrade"
    assert harness.active() == "1.1.0"
    await harness.desire("1.0.0", pinned=True)
    await harness.settle()
    assert harness.active() == "1.0.0"


async def test_swap_under_load_fails_no_request(harness: Harness, artifacts: dict[str, Path]):
    """Four clients keep inferring through leases while the model is swapped: none fails."""
    manager = harness.service.manager
    batch = manager.current().artifact.golden_batch()
    stop = threading.Event()
    served: dict[str, int] = {}
    failures: list[str] = []
    infer_lock = threading.Lock()  # the backends' one-caller-at-a-time contract

    def client() -> None:
        while not stop.is_set():
            try:
                with manager.lease() as m, infer_lock:
                    m.backend.infer(batch)
                    served[m.version] = served.get(m.version, 0) + 1
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        harness.sim.publish(artifacts["1.1.0"])
        await harness.desire("1.1.0")
        await harness.settle()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert served.get("1.0.0", 0) > 0 and served.get("1.1.0", 0) > 0
    assert harness.active() == "1.1.0"


async def test_clean_stop_during_the_health_gate_resumes_it(
    tmp_path: Path, artifacts: dict[str, Path]
):
    """SIGTERM (or a remote restart) mid-gate is not a crash: the new model keeps serving and
    its gate starts over; only a kill during the gate rolls back (see test_power_loss)."""
    sim = SimulatedRepository()
    sim.publish(artifacts["1.0.0"])
    config = FAST.model_copy(update={"gate_quiet_s": 30.0, "gate_good_inferences": 1000})
    h = await Harness(tmp_path, sim, config).start()
    await h.desire("1.0.0")
    await h.service.reconcile()
    h.service.gate.good = 10_000
    await h.settle()
    sim.publish(artifacts["1.1.0"])
    await h.desire("1.1.0")
    await h.service.reconcile()
    assert h.service.gate is not None
    await h.close()

    again = await Harness(tmp_path, sim, config).start()
    assert again.active() == "1.1.0"
    assert again.service.gate is not None
    assert again.service.store.journal().probation.sha256 == again.service.store.current()
    await again.close()
