"""Site adaptation (MAE on the site's unlabeled imagery before the probe), through real
``run_job`` calls with a tiny pre-trained encoder and hand-made crack images, and its
``adapt`` option through the real fine-tune service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.errors import DataError
from daemon.finetune.options import MAX_ADAPT_STEPS, check_options
from models.artifact import load_artifact
from models.finetune.adapt import adapt
from models.finetune.job import run_job
from tests.finetune.conftest import Site, make_parent
from tests.finetune.test_probe import crack_set, spec_for


def test_adaptation_learns_to_reconstruct_the_site_images(tmp_path: Path, encoder: Path) -> None:
    """The encoder and a fresh decoder learn the masked-patch task on the site's images: the
    loss falls, and the encoder's weights move (the head is left alone)."""
    from models.finetune.job import load_tile

    samples = crack_set(tmp_path / "set", per_class=20)
    pool = np.stack([load_tile(p, 32) for p, _ in samples])
    artifact = load_artifact(encoder)
    model = artifact.build_model()
    head = model.head.weight.detach().clone()
    qkv = model.blocks[0].attn.qkv.weight.detach().clone()  # type: ignore[union-attr,operator]
    done = adapt(model, pool, artifact.card.preprocessing, seed=0, steps=200, seconds=None,
                 threads=1)
    assert done.steps == 200 and done.images == 40
    assert done.final_loss < 0.9 * done.first_loss, done
    assert torch.equal(model.head.weight, head)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, qkv)  # type: ignore[union-attr,arg-type]


def test_a_job_adapts_on_its_training_images_and_the_unlabeled_pool_only(
        tmp_path: Path, encoder: Path) -> None:
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = crack_set(tmp_path / "set")
    frames = crack_set(tmp_path / "frames", per_class=5, seed=3)
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not an image")
    spec = spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60, adapt_steps=20,
                    adapt_images=(*[p for p, _ in frames], str(unreadable)))
    result = run_job(spec)
    adapt_details = result.details["adapt"]
    # the training split (36 of 48) and the 10 readable frames; never the held-out 12
    assert result.train == 36 and adapt_details["images"] == 36 + 10
    assert adapt_details["steps"] == 20
    weights = result.trained_weights
    assert weights is not None
    from safetensors.torch import load_file

    parent_blocks = load_artifact(parent).build_model().state_dict()
    trained = load_file(weights)
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"],
                           parent_blocks["blocks.0.attn.qkv.weight"])


def test_adaptation_stops_at_its_time_cap(tmp_path: Path, encoder: Path) -> None:
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = crack_set(tmp_path / "set", per_class=8)
    result = run_job(spec_for(parent, samples, tmp_path / "cand", epochs=5, adapt_steps=500,
                              adapt_max_s=1e-6))
    assert result.details["adapt"]["steps"] == 1


def test_by_default_the_encoder_is_left_as_the_parent_had_it(tmp_path: Path,
                                                              encoder: Path) -> None:
    parent = make_parent(tmp_path / "parent", encoder=encoder)
    samples = crack_set(tmp_path / "set", per_class=8)
    result = run_job(spec_for(parent, samples, tmp_path / "cand", epochs=5, always_export=True))
    assert "adapt" not in result.details
    assert result.candidate is not None
    cand = load_artifact(Path(result.candidate)).build_model().state_dict()
    base = load_artifact(parent).build_model().state_dict()
    assert torch.equal(cand["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])


def test_the_adapt_option_must_be_a_whole_number() -> None:
    with pytest.raises(DataError, match="adapt must be a whole number"):
        check_options({"adapt": "many"})


def test_the_adapt_option_must_be_within_its_range() -> None:
    assert check_options({"adapt": 0})["adapt"] == 0
    for bad in (-1, MAX_ADAPT_STEPS + 1, True):
        with pytest.raises(DataError, match=f"adapt must be between 0 and {MAX_ADAPT_STEPS}"):
            check_options({"adapt": bad})


async def test_a_bad_adapt_option_is_refused_before_any_job(site: Site, site_tiles: Path) -> None:
    await site.add_tiles(site_tiles)
    resp = await site.client.post("/v1/finetune", json={"adapt": -5}, headers=site.auth)
    body = await resp.json()
    assert resp.status == 422 and "adapt must be between" in body["reason"], body
    jobs = await (await site.client.get("/v1/finetune", headers=site.auth)).json()
    assert jobs["items"] == []


async def test_the_adapt_option_reaches_the_worker(site: Site, site_tiles: Path) -> None:
    await site.add_tiles(site_tiles)
    job = await site.wait((await site.start(method="linear", adapt=3, epochs=5))["id"])
    assert job["status"] == "done", job
    assert job["result"]["details"]["adapt"]["steps"] == 3
    spec = json.loads((site.service.jobs.dir(job["id"]) / "job.json").read_text())  # type: ignore[union-attr]
    assert spec["adapt_steps"] == 3


def test_a_finished_adaptation_is_resumed_from_its_checkpoint_not_redone(
        tmp_path: Path, encoder: Path) -> None:
    """A worker killed after the adaptation (in the probe) runs again: it must pick up the
    adapted encoder from the checkpoint, not adapt a second time."""
    from models.finetune.job import load_tile

    samples = crack_set(tmp_path / "set", per_class=8)
    pool = np.stack([load_tile(p, 32) for p, _ in samples])
    artifact = load_artifact(encoder)
    ckpt = tmp_path / "checkpoint.pt.adapt"
    first = artifact.build_model()
    done = adapt(first, pool, artifact.card.preprocessing, seed=0, steps=6, seconds=None,
                 threads=1, checkpoint=ckpt, fingerprint={"job": "a"})
    again = artifact.build_model()
    redo = adapt(again, pool, artifact.card.preprocessing, seed=0, steps=6, seconds=None,
                 threads=1, checkpoint=ckpt, fingerprint={"job": "a"})
    assert done.resumed_from == 0 and redo.resumed_from == 6 and redo.steps == 6
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
