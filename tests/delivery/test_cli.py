"""``spoke models list|activate|rollback`` on a store the reconciler filled."""

import json
from pathlib import Path

import pytest

from daemon.cli import main
from tests.delivery.conftest import Harness


@pytest.fixture
async def two_versions(harness: Harness, artifacts: dict[str, Path]) -> Harness:
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    return harness


def _list(state: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["models", "list", "--state-dir", str(state), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


async def test_list_shows_active_and_previous(two_versions: Harness, capsys):
    info = _list(two_versions.tmp, capsys)
    assert info["active"]["version"] == "1.1.0"
    roles = {m["version"]: m["role"] for m in info["entries"]}
    assert roles == {"1.0.0": "previous", "1.1.0": "active, committed"}


async def test_operator_activate_and_rollback_hold_against_the_hub(
    two_versions: Harness, capsys, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SPOKE_MODELS__BACKEND", "onnxruntime")
    state = two_versions.tmp
    assert main(["models", "activate", "1.0.0", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    info = _list(state, capsys)
    assert info["active"]["version"] == "1.0.0" and info["hold"]["action"] == "activate"
    # The reconciler leaves the operator's choice alone while the hub desires the same thing.
    await two_versions.service.reconcile()
    assert two_versions.service.store.meta(two_versions.service.store.current())[
        "version"] == "1.0.0"
    assert main(["models", "rollback", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert _list(state, capsys)["active"]["version"] == "1.1.0"


async def test_activating_a_version_not_in_the_store_is_refused(two_versions: Harness, capsys):
    assert main(["models", "activate", "9.9.9", "--state-dir", str(two_versions.tmp)]) == 2
    assert "not in the store" in capsys.readouterr().err
