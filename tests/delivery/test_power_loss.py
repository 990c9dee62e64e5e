"""kill -9 at every step of installing and activating a model: the appliance comes back with a
verified model, old or new, never a partial one.

Each step runs in a child process that SIGKILLs itself at a named crash point
(``$SPOKE_FAULT_AT``, see ``daemon.delivery.store.crash_point``); the test then starts a real
reconciler on the same store, as the daemon would after a power loss.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.repository import pack_tar
from tests.delivery.conftest import Harness
from tests.delivery.simulator import SimulatedRepository

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import hashlib, json, sys
from pathlib import Path
from daemon.delivery.store import ModelStore
root, tar, version, action = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
store = ModelStore(root)
sha = hashlib.sha256(tar.read_bytes()).hexdigest()
meta = {"sha256": sha, "length": tar.stat().st_size, "name": "crack-vit", "version": version,
        "target": f"models/crack-vit/crack-vit-{version}.tar"}
with store.locked():
    store.install(tar, meta, lambda path: None)
    store.activate(sha, "test")
    if action == "commit":
        store.commit(sha)
    else:
        store.rollback("test")
print("finished")
"""

# (crash point, what the child was doing, the version served after recovery). A crash while
# the new model is on probation counts against it: the appliance goes back to the old one.
STEPS = [
    ("install-extracted", "commit", "1.0.0"),
    ("install-renamed", "commit", "1.0.0"),
    ("activate-journal", "commit", "1.0.0"),
    ("activate-previous", "commit", "1.0.0"),
    ("activate-current", "commit", "1.0.0"),
    ("commit", "commit", "1.1.0"),
    ("rollback-current", "rollback", "1.0.0"),
]


@pytest.mark.parametrize(("step", "action", "expected"), STEPS)
async def test_kill_9_during_activation_leaves_a_verified_model(
    step: str, action: str, expected: str, tmp_path: Path, artifacts: dict[str, Path]
):
    sim = SimulatedRepository()
    sim.publish(artifacts["1.0.0"])
    h = await Harness(tmp_path, sim).start()
    await h.desire("1.0.0")
    await h.settle()
    await h.close()
    tar = tmp_path / "1.1.0.tar"
    tar.write_bytes(pack_tar(artifacts["1.1.0"]))

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "models"), str(tar), "1.1.0", action],
        env=os.environ | {"SPOKE_FAULT_AT": step, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -9, proc.stderr  # it died at the crash point, like a power loss

    after = await Harness(tmp_path, sim).start()  # recover() + load, as on boot
    try:
        store = after.service.store
        served = after.service.manager.current()
        assert served is not None, "no model served after the power loss"
        assert served.sha256 == store.current()
        assert served.version == expected
        assert not list(store.entries_dir.glob(".tmp-*"))
        assert store.journal().probation is None
        from models.artifact import load_artifact

        for meta in store.entries():  # every entry left in the store is complete and verified
            assert load_artifact(store.path(meta["sha256"])).card.version == meta["version"]
    finally:
        await after.close()
