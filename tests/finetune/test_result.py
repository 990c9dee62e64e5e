"""The fine-tune result is a typed contract: what the worker writes, the daemon validates on
arrival, and the JSON the job row keeps is the same object again."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from appliance.finetune import GateReport, JobResult, Skipped
from daemon.finetune.jobs import JobOutcome
from models.finetune.gate import compare
from models.training.metrics import Scores


def a_result() -> JobResult:
    comparison = compare(Scores({"crack": 0.5}, 0.5, 0.4), Scores({"crack": 0.8}, 0.8, 0.7),
                         0.01, 0.05)
    return JobResult(
        method="linear", samples=12, train=9, held_out=3,
        skipped=(Skipped(path="/s/bad.png", reason="not an image"),),
        labels=("background", "crack"), steps=40, resumed_from=0, train_seconds=1.5,
        final_loss=0.25, details={"views": 4},
        comparison=GateReport.model_validate(comparison.to_dict()),
        candidate="/jobs/j1/candidate", trained_weights="/jobs/j1/trained.safetensors",
        version="1.0.1", parent="crack-vit@1.0.0", device="cpu", threads=1, seconds=2.0)


def test_the_result_survives_its_json_unchanged():
    result = a_result()
    assert JobResult.model_validate(result.to_dict()) == result
    assert result.to_dict()["comparison"]["promote"] is True


def test_the_gate_report_keeps_what_the_comparison_said():
    report = a_result().comparison
    assert report.promote and report.candidate.macro_f1 == 0.8
    assert report.macro_f1_delta == pytest.approx(0.3)


@pytest.mark.parametrize("change", [
    {"surprise": 1},
    {"comparison": {"promote": True}},
    {"steps": "many"},
    {"skipped": [{"path": "/s/x.png"}]},
], ids=["unknown key", "partial comparison", "steps not a number", "skipped without reason"])
def test_a_malformed_result_is_refused(change: dict[str, Any]):
    with pytest.raises(ValidationError):
        JobResult.model_validate(a_result().to_dict() | change)


def test_a_missing_field_is_refused():
    data = a_result().to_dict()
    del data["parent"]
    with pytest.raises(ValidationError):
        JobResult.model_validate(data)


def test_the_outcome_adds_the_promotion_and_writes_no_empty_upload():
    outcome = JobOutcome.of(a_result(), {"state": "not-promoted", "reason": "kept back"})
    stored = outcome.to_dict()
    assert stored["promotion"] == {"state": "not-promoted", "reason": "kept back"}
    assert "review_upload" not in stored
    assert JobOutcome.model_validate(stored) == outcome
    uploaded = outcome.model_copy(update={"review_upload": {"uploaded": True}})
    assert uploaded.to_dict()["review_upload"] == {"uploaded": True}
