"""Evaluation: the metrics, the labeled-subset selection, and the report command end to end."""

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import DataError
from models.data import LABELS
from models.training.evaluate import EvalConfig, select_shots
from models.training.metrics import score
from models.training.pretrain import PretrainConfig
from provisioning.cli import main


def test_f1_exact_match_and_macro_average() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.1]], dtype=np.float32)
    s = score(probs, targets, ("a", "b"))
    # a: tp 2, fp 1, fn 0 -> 0.8; b: tp 1, fp 0, fn 1 -> 2/3
    assert s.per_label_f1 == pytest.approx({"a": 0.8, "b": 2 / 3})
    assert s.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)
    assert s.exact_match == pytest.approx(0.5)


def test_a_label_never_seen_nor_predicted_scores_zero() -> None:
    s = score(np.zeros((3, 1)), np.zeros((3, 1)), ("a",))
    assert s.per_label_f1["a"] == 0.0


def test_shot_selection_reaches_k_per_label_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((500, 4)) < 0.3).astype(np.float32)
    idx = select_shots(targets, 10, seed=1)
    assert (targets[idx].sum(axis=0) >= 10).all()
    assert len(idx) < 60, "the walk stops once every label has its k"
    assert np.array_equal(idx, select_shots(targets, 10, seed=1))


@pytest.mark.slow
def test_evaluate_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "FOUNDATION.md"
    report.write_text("# Notes kept above the table\n")
    argv = [
        "evaluate",
        "--preset",
        "tiny",
        "--domains",
        "1,2",
        "--tiles-per-domain",
        "32",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--shots",
        "2,4",
        "--pool",
        "60",
        "--test",
        "30",
        "--finetune-steps",
        "2",
        "--finetune-batch",
        "8",
        "--work",
        str(tmp_path / "work"),
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    text = report.read_text()
    assert text.startswith("# Notes kept above the table")
    rows = [
        line for line in text.splitlines() if line.startswith("| pre-") or line.startswith("| from")
    ]
    assert len(rows) == 3 * 2 * 2
    assert all(len(r.split("|")) == 8 + len(LABELS) for r in rows)
    assert (tmp_path / "work" / "pretrained-mae" / "card.json").is_file()
    capsys.readouterr()
    assert main(argv) == 0, "a second run reuses the pre-trained models in --work"
    assert "pretrain:" not in capsys.readouterr().out


def test_unknown_starting_points_are_refused() -> None:
    with pytest.raises(DataError, match="starting points"):
        EvalConfig(PretrainConfig(steps=1), starts=("imagenet",))
