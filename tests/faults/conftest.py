"""Fixtures for the fault suite: the private network and one fleet shared by the scenarios
of a module (real processes are the expensive part); each scenario ends with the books."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultFleet, fleet_artifacts
from tests.support.netns import Fabric, NetnsUnavailable


@pytest.fixture(scope="session")
def fault_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fleet_artifacts(tmp_path_factory.mktemp("fault-artifacts"))


@pytest.fixture(scope="module")
def fabric() -> Iterator[Fabric]:
    if shutil.which("nft") is None:
        pytest.skip("the fault suite needs nft (nftables; scripts/setup.sh installs it)")
    try:
        net = Fabric()
    except NetnsUnavailable as exc:
        pytest.skip(f"the fault suite needs network namespaces: {exc}")
    yield net
    net.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, fabric: Fabric,
          fault_artifacts: dict[str, Path]) -> Iterator[FaultFleet]:
    fleet = FaultFleet(tmp_path_factory.mktemp("fleet"), fabric, fault_artifacts, size=1)
    try:
        yield fleet.start()
    finally:
        fleet.close()
