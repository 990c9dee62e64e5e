"""The plan a queued job shows (``spoke finetune start``'s "queued:" line) says what the job will
really do. For a parent that decides per frame, the tiles train and the labeled frames
calibrate or judge, so counting frames as samples and showing a split of all of them (session
6: "linear on 164 samples (42 held out)") was wrong; a probe on tiles trains on every sample
and the gate judges each out of fold, so "(N held out)" was wrong for it too. Real service and
routes, a tiny model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.fsutil import write_secret
from appliance.identity import generate_key, key_to_pem
from daemon.commands.finetune import _progress_line
from daemon.finetune.options import check_options
from models.finetune.job import Prepared, background_samples, prepare_job
from models.finetune.spec import JobSpec
from tests.finetune.conftest import Site, make_parent, open_site, seed_store
from tests.finetune.test_frames import crack_frames, per_frame
from tests.finetune.test_probe import crack_set

TILES, FRAMES = 24, 16


@pytest.fixture
async def frame_site(tmp_path: Path, aiohttp_client: Any, encoder: Path
                     ) -> AsyncIterator[Site]:
    """An appliance whose active model decides per frame."""
    state = tmp_path / "state"
    write_secret(state / "identity" / "device.key", key_to_pem(generate_key()))
    parent = per_frame(make_parent(tmp_path / "p0", encoder=encoder), tmp_path / "parent")
    seed_store(state, parent)
    site = await open_site(state, aiohttp_client)
    yield site
    await site.service.stop()
    await site.models.stop()


def prepared(plan: dict[str, Any], tmp_path: Path, adapt_steps: int = 0) -> Prepared:
    """The job the worker would prepare from this plan, for comparing its split with the plan."""
    spec = JobSpec(parent=plan["parent_path"], samples=tuple(
        (p, tuple(labels)) for p, labels in plan["sample_list"]), labels=tuple(plan["labels"]),
        out=str(tmp_path / "cand"), name=plan["name"], version=plan["version"],
        adapt_steps=adapt_steps)
    return prepare_job(spec, lambda _: None)


async def add(site: Site, samples: list[tuple[str, tuple[str, ...]]]) -> None:
    svc = site.service
    assert svc.samples is not None
    known, _ = svc.known_labels()
    for path, labels in samples:
        await svc.db(svc.samples.add, Path(path).read_bytes(), labels, known)


async def test_a_frame_jobs_plan_says_tiles_train_and_frames_calibrate_and_judge(
        frame_site: Site, tmp_path: Path) -> None:
    await add(frame_site, crack_set(tmp_path / "tiles", per_class=TILES // 2))
    await add(frame_site, crack_frames(tmp_path / "frames", FRAMES, seed=1))
    svc = frame_site.service
    plan = await svc.db(svc.plan, check_options({"method": "linear"}))
    assert plan["samples"] == TILES + FRAMES
    assert (plan["train"], plan["frames"]) == (TILES, FRAMES)
    assert plan["calibration"] + plan["held_out"] == FRAMES
    assert min(plan["calibration"], plan["held_out"]) > 0

    # ... which is what the job does with the same samples.
    job = prepared(plan, tmp_path)
    assert job.calibration is not None
    assert (len(job.train_idx), len(job.calibration), len(job.held_out)) == (
        plan["train"], plan["calibration"], plan["held_out"])

    line = _progress_line({"phase": "queued", **plan})
    assert line == (
        f"  queued: linear on {TILES} tiles; {FRAMES} labeled frames: {plan['calibration']} "
        f"calibrate its thresholds, {plan['held_out']} judge it against the current model, "
        f"per frame; spallation, efflorescence, exposed_bars, corrosion_stain (no sample "
        f"carries them) keep the parent's head, their thresholds raised to stay quiet on the "
        f"{plan['background']} background calibration frames -> crack-vit@{plan['version']}")
    assert plan["background"] == len(background_samples(job))


async def test_a_probe_on_tiles_plans_to_train_on_every_sample_and_judge_each_out_of_fold(
        site: Site, tmp_path: Path) -> None:
    await add(site, crack_set(tmp_path / "tiles", per_class=TILES // 2))
    svc = site.service
    plan = await svc.db(svc.plan, check_options({"method": "linear"}))
    assert plan["out_of_fold"] and plan["train"] == plan["held_out"] == TILES

    # ... which is what the job does with the same samples.
    job = prepared(plan, tmp_path)
    assert job.cross_validated
    assert (len(job.train_idx), len(job.held_out)) == (TILES, TILES)
    assert _progress_line({"phase": "queued", **plan}) == (
        f"  queued: linear on {TILES} samples, each judged out of fold (by a fit that never "
        f"saw it); spallation, efflorescence, exposed_bars, corrosion_stain (no sample carries "
        f"them) keep the parent's head, their thresholds raised to stay quiet on the "
        f"{TILES // 2} background samples -> crack-vit@{plan['version']}")


async def test_with_site_adaptation_the_plan_holds_a_share_out_as_the_job_does(
        site: Site, tmp_path: Path) -> None:
    await add(site, crack_set(tmp_path / "tiles", per_class=TILES // 2))
    svc = site.service
    plan = await svc.db(svc.plan, check_options({"method": "linear", "adapt": 10}))
    assert "out_of_fold" not in plan and plan["train"] + plan["held_out"] == TILES
    job = prepared(plan, tmp_path, adapt_steps=10)
    assert not job.cross_validated
    assert (len(job.train_idx), len(job.held_out)) == (plan["train"], plan["held_out"])
    assert _progress_line({"phase": "queued", **plan}) == (
        f"  queued: linear on {TILES} samples ({plan['held_out']} held out); spallation, "
        f"efflorescence, exposed_bars, corrosion_stain (no sample carries them) keep the "
        f"parent's head, their thresholds raised to stay quiet on the {plan['background']} "
        f"background samples -> crack-vit@{plan['version']}")
    assert plan["background"] == len(background_samples(job))


async def test_a_frame_job_without_labeled_frames_is_refused_before_it_is_queued(
        frame_site: Site, tmp_path: Path) -> None:
    await add(frame_site, crack_set(tmp_path / "tiles", per_class=TILES // 2))
    resp = await frame_site.client.post("/v1/finetune", json={"method": "linear"},
                                        headers=frame_site.auth)
    body = await resp.json()
    assert resp.status == 422, body
    assert "decides per frame" in body["reason"] and "label whole frames" in body["reason"]
    jobs = await (await frame_site.client.get("/v1/finetune", headers=frame_site.auth)).json()
    assert jobs["items"] == []


async def test_a_frame_job_with_too_few_labeled_frames_is_refused_before_it_is_queued(
        frame_site: Site, tmp_path: Path) -> None:
    await add(frame_site, crack_set(tmp_path / "tiles", per_class=TILES // 2))
    await add(frame_site, crack_frames(tmp_path / "frames", 4, seed=1))
    resp = await frame_site.client.post("/v1/finetune", json={"method": "linear"},
                                        headers=frame_site.auth)
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "too_few_samples", body
    assert body["reason"].startswith("labeled frames: 4 labeled sample(s)")
