"""Bad input: each case gets a clear error and nothing already stored is lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.finetune.conftest import FAST, Site, open_site, png


async def post_png(site: Site, data: bytes, labels: str, **query: str):
    return await site.client.post("/v1/samples", data=data,
                                  params={"labels": labels, **query},
                                  headers={**site.auth, "Content-Type": "image/png"})


async def test_a_corrupted_sample_image_is_refused_and_the_others_stay(site: Site):
    ok = await post_png(site, png(1), "crack")
    assert ok.status == 201
    truncated = png(2)[:60]
    resp = await post_png(site, truncated, "crack")
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "corrupt_image", body
    listing = await (await site.client.get("/v1/samples", headers=site.auth)).json()
    assert listing["count"] == 1


async def test_an_unknown_label_is_refused_unless_asked_for(site: Site):
    resp = await post_png(site, png(3), "rust")
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "unknown_labels"
    assert "--new-label" in body["reason"]
    resp = await post_png(site, png(3), "rust", new_label="true")
    body = await resp.json()
    assert resp.status == 201 and body["new_labels"] == ["rust"]
    listing = await (await site.client.get("/v1/samples", headers=site.auth)).json()
    assert listing["new_labels"] == ["rust"]


async def test_too_few_samples_to_split_is_refused_before_any_job(site: Site):
    for i in range(5):
        assert (await post_png(site, png(10 + i), "crack" if i % 2 else "background")).status \
            == 201
    resp = await site.client.post("/v1/finetune", json={"method": "linear"}, headers=site.auth)
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "too_few_samples", body
    assert "at least 8" in body["reason"]
    jobs = await (await site.client.get("/v1/finetune", headers=site.auth)).json()
    assert jobs["items"] == []


async def test_a_job_started_while_another_runs_is_refused_and_cancel_stops_it(
    site: Site, site_tiles: Path
):
    await site.add_tiles(site_tiles)
    first = await site.start(method="partial", epochs=2000)
    await site.wait(first["id"], until=("running",))
    resp = await site.client.post("/v1/finetune", json={}, headers=site.auth)
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "job_running"
    assert first["id"] in body["reason"]
    resp = await site.client.post(f"/v1/finetune/{first['id']}/cancel", headers=site.auth)
    assert resp.status == 202
    job = await site.wait(first["id"])
    assert job["status"] == "cancelled"
    assert site.models.manager.current().version == "1.0.0"
    assert site.last("finetune_cancelled")["job"] == first["id"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


async def test_disk_full_during_checkpointing_fails_the_job_and_keeps_the_last_checkpoint(
    tmp_path: Path, aiohttp_client, parent_artifact: Path, site_tiles: Path
):
    """A real full filesystem: the job directory on a tmpfs with room for the job's files and
    one checkpoint, not for writing the next one beside it (atomic writes need both)."""
    from appliance.fsutil import write_secret
    from appliance.identity import generate_key, key_to_pem
    from tests.finetune.conftest import seed_store

    state = tmp_path / "state"
    write_secret(state / "identity" / "device.key", key_to_pem(generate_key()))
    seed_store(state, parent_artifact)
    jobs_dir = state / "finetune" / "jobs"
    if not _mount_tmpfs(jobs_dir, "600k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    site = await open_site(state, aiohttp_client,
                           FAST.model_copy(update={"checkpoint_every_steps": 1}))
    try:
        await site.add_tiles(site_tiles)
        job = await site.start(method="full", epochs=50)
        done = await site.wait(job["id"])
        assert done["status"] == "failed"
        assert done["error"]["code"] == "disk_full", done["error"]
        ckpt = jobs_dir / job["id"] / "checkpoint.pt"
        assert ckpt.exists()
        import torch

        state_dict = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert state_dict["step"] >= 1
        assert site.last("finetune_failed")["error"]["code"] == "disk_full"
        assert site.models.manager.current().version == "1.0.0"
        listing = await (await site.client.get("/v1/samples", headers=site.auth)).json()
        assert listing["count"] == 32
    finally:
        await site.service.stop()
        await site.models.stop()
        subprocess.run(["umount", "-l", str(jobs_dir)], capture_output=True)
