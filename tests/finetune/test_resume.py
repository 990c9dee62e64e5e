"""A job survives kill -9: of its worker (restarted from the checkpoint) and of the daemon
(the worker dies with it; the job resumes on the next start)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.finetune.conftest import FAST, Site, open_site
from tests.support.wait import eventually

pytestmark = pytest.mark.slow


async def wait_step(site: Site, job_id: str, step: int, timeout: float = 60.0) -> None:
    async def reached() -> bool:
        job = await site.service.db(site.service.jobs.get, job_id)
        progress = job["progress"] or {}
        if progress.get("phase") == "train" and progress.get("step", 0) >= step:
            return True
        assert job["status"] in ("queued", "running"), job
        return False

    await eventually(reached, timeout, f"job {job_id} to reach step {step}")


async def test_a_worker_killed_with_sigkill_resumes_from_its_checkpoint(
    site: Site, site_tiles: Path
):
    await site.add_tiles(site_tiles)
    # Enough steps that on an idle machine the kill still lands mid-training.
    job = await site.start(method="lora", epochs=100)
    await wait_step(site, job["id"], 4)
    pid = site.service.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    done = await site.wait(job["id"])
    assert done["status"] == "done", done
    assert done["attempts"] == 2
    assert done["result"]["resumed_from"] >= 2
    assert done["result"]["steps"] == 200


async def test_a_job_interrupted_by_a_daemon_restart_resumes_on_the_next_start(
    site: Site, site_tiles: Path, aiohttp_client: Any
):
    await site.add_tiles(site_tiles)
    job = await site.start(method="lora", epochs=100)
    await wait_step(site, job["id"], 4)
    await site.service.stop()  # as a restart would: the worker goes, the job stays "running"
    await site.models.stop()
    again = await open_site(site.state, aiohttp_client, FAST, site.events)
    try:
        done = await again.wait(job["id"])
        assert done["status"] == "done", done
        assert done["result"]["resumed_from"] >= 2
    finally:
        await again.service.stop()
        await again.models.stop()
