"""``auto`` remembers its measurement: a cache hit, and invalidation by model or engine version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.artifact import Artifact, write_artifact
from models.backends import choice as choice_module
from models.backends import create_backend
from models.backends.choice import ChoiceKey, EngineChoice, load_choice, save_choice
from models.backends.select import choice_key
from models.config import tiny_config
from models.vit import build_model


def test_second_auto_reads_the_stored_pick(tiny_artifact: Artifact, tmp_path: Path) -> None:
    first = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert first.choice is not None and first.choice.source == "measured"
    assert first.choice.pick == f"{first.name}/{first.precision}"
    assert first.choice.rates[first.choice.pick] == max(first.choice.rates.values())
    stored = list(tmp_path.glob("*.choice.json"))
    assert len(stored) == 1
    record = json.loads(stored[0].read_text())
    assert record["pick"] == first.choice.pick
    assert record["key"]["batch_size"] == first.batch_size

    second = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert second.choice is not None and second.choice.source == "cache"
    assert (second.name, second.precision) == (first.name, first.precision)
    assert second.choice.rates == first.choice.rates
    assert second.describe()["auto"]["source"] == "cache"


def test_remeasure_measures_again(tiny_artifact: Artifact, tmp_path: Path) -> None:
    create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    again = create_backend(tiny_artifact, "auto", cache_dir=tmp_path, remeasure=True)
    assert again.choice is not None and again.choice.source == "measured"


def test_another_model_is_measured(tiny_artifact: Artifact, tmp_path: Path) -> None:
    create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    other = write_artifact(
        build_model(tiny_config(), seed=1), tmp_path / "other", name="tiny", version="0.1.0"
    )
    assert choice_key(other, 16) != choice_key(tiny_artifact, 16)
    backend = create_backend(other, "auto", cache_dir=tmp_path)
    assert backend.choice is not None and backend.choice.source == "measured"
    assert len(list(tmp_path.glob("*.choice.json"))) == 2


def test_a_new_engine_version_is_measured(
    tiny_artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    installed = choice_module.engine_versions()
    upgraded = {**installed, "onnxruntime": installed["onnxruntime"] + ".post1"}
    monkeypatch.setattr("models.backends.select.engine_versions", lambda: upgraded)
    backend = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert backend.choice is not None and backend.choice.source == "measured"


def test_another_batch_size_is_measured(tiny_artifact: Artifact, tmp_path: Path) -> None:
    create_backend(tiny_artifact, "auto", batch_size=4, cache_dir=tmp_path)
    backend = create_backend(tiny_artifact, "auto", batch_size=8, cache_dir=tmp_path)
    assert backend.choice is not None and backend.choice.source == "measured"


def test_engine_versions_come_from_installed_packages() -> None:
    versions = choice_module.engine_versions()
    import onnxruntime
    import torch

    assert versions["torch"] == torch.__version__
    assert versions["onnxruntime"] == onnxruntime.__version__


def test_an_unreadable_record_is_ignored_and_replaced(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    key = choice_key(tiny_artifact, 16)
    path = save_choice(tmp_path, key, EngineChoice("torch/fp32", {"torch/fp32": 1.0}))
    path.write_text("{not json")
    assert load_choice(tmp_path, key) is None
    backend = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert backend.choice is not None and backend.choice.source == "measured"
    assert load_choice(tmp_path, key) is not None


def test_a_stored_pick_that_no_longer_builds_is_measured_again(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    key = choice_key(tiny_artifact, 16)
    save_choice(tmp_path, key, EngineChoice("torch/fp99", {"torch/fp99": 1e9}))
    backend = create_backend(tiny_artifact, "auto", cache_dir=tmp_path)
    assert backend.choice is not None and backend.choice.source == "measured"
    stored = load_choice(tmp_path, key)
    assert stored is not None and stored.pick != "torch/fp99"


def test_key_digest_changes_with_every_field() -> None:
    base = ChoiceKey("ab" * 32, {"torch": "2.13.0"}, "cpu:x", 16)
    variants = [
        ChoiceKey("cd" * 32, {"torch": "2.13.0"}, "cpu:x", 16),
        ChoiceKey("ab" * 32, {"torch": "2.14.0"}, "cpu:x", 16),
        ChoiceKey("ab" * 32, {"torch": "2.13.0", "openvino": "2026.4"}, "cpu:x", 16),
        ChoiceKey("ab" * 32, {"torch": "2.13.0"}, "gpu:NVIDIA H200", 16),
        ChoiceKey("ab" * 32, {"torch": "2.13.0"}, "cpu:x", 32),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 6
