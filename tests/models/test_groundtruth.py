"""Precision and recall of detections against hand-made ground-truth boxes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.errors import DataError
from models.groundtruth import compare_frames, truth_by_content, truth_of

BOXES = {
    "a.jpg": {"boxes": [{"label": "crack", "box": [1, 2, 30, 40]},
                        {"label": "crack", "box": [50, 2, 90, 40]},
                        {"label": "spallation", "box": [5, 5, 9, 9]}]},
    "b.jpg": {"boxes": []},
    "c.jpg": {"boxes": [{"label": "corrosion_stain", "box": [0, 0, 4, 4]}]},
}


def test_pairs_count_each_frame_label_once():
    truth = truth_of(BOXES)
    assert truth["a.jpg"] == {"crack", "spallation"} and truth["b.jpg"] == frozenset()
    detected = {"a.jpg": ["crack"], "b.jpg": ["background"], "c.jpg": ["corrosion_stain",
                                                                         "efflorescence"]}
    got = compare_frames(detected, truth)
    # tp: a/crack, c/corrosion_stain; fp: c/efflorescence; fn: a/spallation
    assert (got.tp, got.fp, got.fn, got.frames) == (2, 1, 1, 3)
    assert got.precision == pytest.approx(2 / 3, abs=1e-4)
    assert got.recall == pytest.approx(2 / 3, abs=1e-4)
    assert got.line() == "detections vs ground truth: precision 0.67 recall 0.67"


def test_a_clean_site_with_no_detections_is_perfect_and_false_alarms_cost_precision():
    truth = {"b.jpg": frozenset()}
    assert compare_frames({"b.jpg": ["background"]}, truth).precision == 1.0
    alarm = compare_frames({"b.jpg": ["crack"]}, truth)
    assert (alarm.precision, alarm.recall, alarm.fp) == (0.0, 1.0, 1)


def test_only_frames_in_both_are_compared():
    got = compare_frames({"x.jpg": ["crack"], "a.jpg": ["crack"]}, {"a.jpg": {"crack"}})
    assert (got.frames, got.tp, got.fp) == (1, 1, 0)


def test_truth_is_keyed_by_the_frames_content(tmp_path: Path):
    (tmp_path / "a.jpg").write_bytes(b"frame a")
    (tmp_path / "boxes.json").write_text(json.dumps({"a.jpg": BOXES["a.jpg"]}))
    sha = hashlib.sha256(b"frame a").hexdigest()
    assert truth_by_content(tmp_path) == {sha: frozenset({"crack", "spallation"})}
    (tmp_path / "boxes.json").write_text(json.dumps({"gone.jpg": {"boxes": []}}))
    with pytest.raises(DataError, match=r"gone\.jpg"):
        truth_by_content(tmp_path)
    with pytest.raises(DataError, match="no readable boxes"):
        truth_of({"a.jpg": {"nope": 1}})
