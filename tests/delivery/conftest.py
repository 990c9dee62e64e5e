"""Fixtures for signed model delivery: tiny artifacts made once, a simulated repository, and a
reconciler wired to it with a fast health gate, built as the daemon builds it
(``daemon.compose.models``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.config import ModelsSection
from daemon import compose
from daemon.delivery.service import Prepare, prepare_model
from tests.delivery.simulator import SimulatedRepository
from tests.support.events import Events
from tests.support.wait import eventually

FAST = ModelsSection(
    backend="onnxruntime",
    gate_good_inferences=3,
    gate_quiet_s=0.3,
    download_deadline_s=20,
    retry_initial_s=0.1,
    retry_cap_s=0.2,
)


def make_artifact(root: Path, version: str, seed: int = 0, name: str = "crack-vit") -> Path:
    from models.artifact import write_artifact
    from models.config import tiny_config
    from models.vit import build_model

    out = root / f"{name}-{version}"
    write_artifact(build_model(tiny_config(), seed=seed), out, name=name, version=version)
    return out


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three versions of one tiny model (different weights, so different bytes)."""
    root = tmp_path_factory.mktemp("artifacts")
    return {v: make_artifact(root, v, seed=i) for i, v in enumerate(["1.0.0", "1.1.0", "2.0.0"])}


class Harness:
    """A reconciler attached to a simulated repository; ``events`` is what went to the hub."""

    def __init__(
        self,
        tmp: Path,
        sim: SimulatedRepository,
        config: ModelsSection = FAST,
        prepare: Prepare = prepare_model,
    ) -> None:
        self.sim = sim
        self.events = Events()
        self.service = compose.models(tmp / "models", config, self.events.emit, prepare=prepare)
        self.tmp = tmp

    async def start(self) -> Harness:
        # Start without the background loop: tests drive each pass themselves.
        svc = self.service
        await svc.resume()
        svc.attach(self.sim.root, self.sim.base, self.sim)
        return self

    async def desire(self, version: str, pinned: bool = False, name: str = "crack-vit") -> None:
        from appliance.delivery import DesiredModel, DesiredState
        from provisioning.repository import target_path

        state = DesiredState(
            model=DesiredModel(
                name=name, version=version, target=target_path(name, version), pinned=pinned
            )
        )
        await self.service.on_desired(state.model_dump_json().encode())

    async def settle(self, timeout: float = 10.0) -> None:
        """One reconcile pass, then wait for the health gate (if one started) to decide."""
        svc = self.service
        await svc.reconcile()

        async def decided() -> bool:
            if svc.gate is None:
                return True
            await svc.check_gate()
            return False

        await eventually(decided, timeout, "the health gate to decide", 0.05)

    def active(self) -> str | None:
        cur = self.service.manager.current()
        return cur.version if cur else None

    def kinds(self) -> list[str]:
        return self.events.kinds()

    def last(self, kind: str) -> dict[str, Any]:
        return self.events.last(kind)

    async def close(self) -> None:
        await self.service.stop()


@pytest.fixture
def sim() -> SimulatedRepository:
    return SimulatedRepository()


@pytest.fixture
async def harness(tmp_path: Path, sim: SimulatedRepository, artifacts: dict[str, Path]) -> Any:
    """A reconciler already serving a committed 1.0.0."""
    sim.publish(artifacts["1.0.0"])
    h = await Harness(tmp_path, sim).start()
    await h.desire("1.0.0")
    await h.settle()
    assert h.active() == "1.0.0" and h.service.store.journal().committed
    h.events.clear()
    yield h
    await h.close()
