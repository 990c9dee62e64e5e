"""Background means no defect for every label: a parent label the site did not train keeps the
parent's head row, but its threshold is raised to stay quiet on the site's background samples
(``models.finetune.quiet``). Real ``run_job`` calls with tiny models, the candidate served by
the real pipeline (ONNX Runtime), and the plan of the real fine-tune service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daemon.commands.finetune import _progress_line
from daemon.finetune.options import check_options
from models.artifact import load_artifact, write_artifact
from models.backends.select import create_backend
from models.finetune.job import background_samples, prepare_job, run_job
from models.finetune.quiet import MARGIN, quiet, untrained
from models.pipeline import Pipeline
from tests.finetune.conftest import Site, make_parent
from tests.finetune.test_plan import add, prepared
from tests.finetune.test_probe import LABELS, crack_set, spec_for


def loud_parent(tmp_path: Path, encoder: Path) -> Path:
    """A parent whose spallation (a label the crack site never labels) fires on every image,
    as the foundation model's crack, spallation and exposed bars did on real photos."""
    model = load_artifact(make_parent(tmp_path / "quiet", encoder=encoder)).build_model()
    with torch.no_grad():
        model.head.bias[LABELS.index("spallation")] = 6.0
    write_artifact(model, tmp_path / "loud", name="crack-vit", version="1.0.0")
    return tmp_path / "loud"


def served_labels(artifact: Path, paths: list[str]) -> list[list[str]]:
    art = load_artifact(artifact)
    pipeline = Pipeline(art, create_backend(art, "onnxruntime"))
    return [pipeline.run(Path(p).read_bytes()).labels for p in paths]


def test_a_label_is_raised_just_over_its_highest_background_probability() -> None:
    probs = np.array([[0.0, 0.2, 0.9, 0.3], [0.0, 0.7, 0.95, 0.1]], dtype=np.float32)
    labels = ("background", "crack", "spallation", "efflorescence")
    thresholds = {"background": 0.5, "crack": 0.5, "spallation": 0.6, "efflorescence": 0.4}
    done = quiet(probs, labels, ["spallation", "efflorescence"], thresholds)
    assert done.background == 2
    assert done.raised == {"spallation": (0.6, round(0.95 + MARGIN, 6))}
    assert thresholds["spallation"] > 0.95
    assert thresholds["efflorescence"] == 0.4  # already quiet on every background sample
    assert thresholds["crack"] == 0.5  # not asked: the site trained it


def test_a_saturated_label_is_capped_at_one() -> None:
    thresholds = {"background": 0.5, "crack": 0.5}
    done = quiet(np.array([[0.0, 1.0]], dtype=np.float32), ("background", "crack"), ["crack"],
                 thresholds)
    assert thresholds["crack"] == 1.0 and done.raised == {"crack": (0.5, 1.0)}


def test_the_untrained_labels_are_the_defects_no_sample_carries() -> None:
    assert untrained(LABELS, {"background", "crack"}) == [
        "spallation", "efflorescence", "exposed_bars", "corrosion_stain"]
    assert untrained(LABELS, set(LABELS)) == []


def test_a_parent_label_firing_on_background_is_quiet_after_and_the_trained_one_untouched(
        tmp_path: Path, encoder: Path) -> None:
    parent = loud_parent(tmp_path, encoder)
    samples = crack_set(tmp_path / "set")
    background = [p for p, labels in samples if labels == ("background",)]
    assert all("spallation" in said for said in served_labels(parent, background))

    result = run_job(spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60))
    assert result.comparison.promote and result.candidate is not None
    rule = result.details["background_rule"]
    assert rule["background"] == len(background)
    # Only the loud label is raised: the others the site did not train are already quiet,
    # and crack, which the site trained, is left to its own calibration.
    assert set(rule["raised"]) == {"spallation"}
    card = load_artifact(Path(result.candidate)).card
    assert card.thresholds["spallation"] == rule["raised"]["spallation"][1]
    assert card.metrics["finetune.raised_from.spallation"] == 0.5
    assert card.metrics["finetune.background_samples"] == len(background)

    # As served: spallation is quiet on the site's background, and on new background images
    # of the site too.
    fresh = [p for p, labels in crack_set(tmp_path / "new", per_class=8, seed=7)
             if labels == ("background",)]
    for said in served_labels(Path(result.candidate), background + fresh):
        assert "spallation" not in said
    # Crack keeps the threshold its own calibration gave: the same job from a parent whose
    # untrained labels are quiet already (the rule raises nothing there) gives the same one.
    same = run_job(spec_for(tmp_path / "quiet", samples, tmp_path / "cand2", seed=1,
                            epochs=60))
    assert same.details["background_rule"]["raised"] == {} and same.candidate is not None
    assert card.thresholds["crack"] == load_artifact(Path(same.candidate)).card.thresholds[
        "crack"]


def test_without_background_samples_nothing_is_raised(tmp_path: Path, encoder: Path) -> None:
    """A site that labeled cracks and efflorescence but no background: no sample says what
    the untrained labels must not fire on, so they keep the parent's thresholds."""
    parent = loud_parent(tmp_path, encoder)
    samples = [(p, ("efflorescence",) if labels == ("background",) else labels)
               for p, labels in crack_set(tmp_path / "set")]
    spec = spec_for(parent, samples, tmp_path / "cand", seed=1, epochs=60, always_export=True)
    assert len(background_samples(prepare_job(spec, lambda _: None))) == 0
    result = run_job(spec)
    assert result.details["background_rule"] == {"background": 0, "raised": {}}
    assert result.candidate is not None
    card = load_artifact(Path(result.candidate)).card
    parent_card = load_artifact(parent).card
    for name in ("spallation", "exposed_bars", "corrosion_stain"):
        assert card.thresholds[name] == parent_card.thresholds[name]
    assert "finetune.raised_from.spallation" not in card.metrics


async def test_the_plan_says_which_labels_stay_quiet_on_how_many_background_samples(
        site: Site, tmp_path: Path) -> None:
    await add(site, crack_set(tmp_path / "tiles", per_class=12))
    svc = site.service
    plan = await svc.db(svc.plan, check_options({"method": "linear"}))
    names = ["spallation", "efflorescence", "exposed_bars", "corrosion_stain"]
    assert plan["untrained"] == names and plan["background"] == 12
    assert len(background_samples(prepared(plan, tmp_path))) == 12  # what the job reads
    assert _progress_line({"phase": "queued", **plan}) == (
        "  queued: linear on 24 samples, each judged out of fold (by a fit that never saw "
        f"it); {', '.join(names)} (no sample carries them) keep the parent's head, their "
        f"thresholds raised to stay quiet on the 12 background samples -> "
        f"crack-vit@{plan['version']}")


async def test_the_plan_says_so_when_there_is_no_background_sample(
        site: Site, tmp_path: Path) -> None:
    await add(site, [(p, ("efflorescence",) if labels == ("background",) else labels)
                     for p, labels in crack_set(tmp_path / "tiles", per_class=12)])
    svc = site.service
    plan = await svc.db(svc.plan, check_options({"method": "linear"}))
    assert plan["background"] == 0
    assert _progress_line({"phase": "queued", **plan}) == (
        "  queued: linear on 24 samples, each judged out of fold (by a fit that never saw "
        "it); no background sample, so spallation, exposed_bars, corrosion_stain keep the "
        f"parent's thresholds -> crack-vit@{plan['version']}")
