"""``spoke finetune start`` and ``cancel`` are other processes: they write the job row, then
wake the daemon (``JOBS_CHANGED``), which looks at the rows only when told. Here this test's
process is the daemon: it runs the fine-tune service and its pid is in ``status.json``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from daemon.state import StateDir
from tests.finetune.conftest import Site
from tests.support.fleet import cli


def this_process_is_the_daemon(site: Site) -> None:
    StateDir(site.state).status.write_text(json.dumps({"pid": os.getpid()}))


async def spoke(*args: str) -> str:
    return (await asyncio.to_thread(cli, "spoke", *args)).stdout


async def test_spoke_finetune_cancel_stops_the_running_worker(
        site: Site, site_tiles: Path) -> None:
    await site.add_tiles(site_tiles)
    this_process_is_the_daemon(site)
    job = await site.start(method="partial", epochs=2000)
    await site.wait(job["id"], until=("running",))
    await spoke("finetune", "cancel", "--state-dir", str(site.state), job["id"])
    done = await site.wait(job["id"])
    assert done["status"] == "cancelled"
    assert site.service.worker_pid is None
    assert site.last("finetune_cancelled")["job"] == job["id"]


async def test_spoke_finetune_start_wakes_the_runner(site: Site, site_tiles: Path) -> None:
    await site.add_tiles(site_tiles)
    this_process_is_the_daemon(site)
    out = await spoke("finetune", "start", "--state-dir", str(site.state), "--method", "partial",
                      "--epochs", "2000", "--json")
    job = json.loads(out)
    running = await site.wait(job["id"], until=("running",))
    assert running["options"]["source"] == "cli"
    resp = await site.client.post(f"/v1/finetune/{job['id']}/cancel", headers=site.auth)
    assert resp.status == 202
    assert (await site.wait(job["id"]))["status"] == "cancelled"
