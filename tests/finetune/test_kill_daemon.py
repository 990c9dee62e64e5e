"""kill -9 of the real daemon mid-job: its worker dies with it (no orphan keeps the CPU), and
the next `spoke run` resumes the job from its checkpoint. A standalone daemon serving a
``--model`` is enough (no hub)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.fleet import Process, cli, free_port, wait_for

pytestmark = pytest.mark.slow


def start_daemon(state: Path, model: Path, n: int) -> Process:
    return Process([sys.executable, "-m", "daemon", "run", "--standalone", "--model", str(model),
                    "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"],
                   state.parent / f"daemon-{n}.log",
                   env={"SPOKE_FINETUNE__CHECKPOINT_EVERY_STEPS": "2",
                        "SPOKE_FINETUNE__NICENESS": "5"})


def job_state(state: Path) -> dict:
    out = cli("spoke", "finetune", "status", "--state-dir", str(state), "--json").stdout
    return json.loads(out)


def test_kill_9_of_the_daemon_stops_the_worker_and_the_job_resumes(
    tmp_path: Path, parent_artifact: Path, site_tiles: Path
) -> None:
    state = tmp_path / "state"
    daemon = start_daemon(state, parent_artifact, 0)
    try:
        wait_for(lambda: (state / "finetune" / "active-model.json").exists(), 60, "the model")
        cli("spoke", "samples", "import", str(site_tiles), "--state-dir", str(state))
        cli("spoke", "finetune", "start", "--state-dir", str(state), "--method", "lora",
            "--epochs", "100")  # the kill must land mid-training on an idle machine too
        wait_for(lambda: (job_state(state)["progress"] or {}).get("step", 0) >= 4, 90,
                 "training to pass step 4")
        workers = [p for p in psutil.Process(daemon.proc.pid).children()
                   if "models.finetune.worker" in " ".join(p.cmdline())]
        assert len(workers) == 1
        daemon.kill()
        psutil.wait_procs(workers, timeout=10)
        assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE
        assert job_state(state)["status"] == "running"

        daemon = start_daemon(state, parent_artifact, 1)
        done = wait_for(lambda: (j := job_state(state))["status"] in ("done", "failed") and j,
                        300, "the resumed job to end")  # 100 epochs at nice 5: minutes under load
        assert done["status"] == "done", done
        assert done["result"]["resumed_from"] >= 2
        assert done["result"]["promotion"]["state"] == "not-promoted"
    finally:
        daemon.terminate()
