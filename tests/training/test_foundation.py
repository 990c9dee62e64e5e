"""The demo's cached, seed-reproducible foundation model."""

import dataclasses
from pathlib import Path

import pytest

from appliance.errors import DataError
from models.artifact import WEIGHTS_FILE, load_artifact
from models.training.foundation import build_foundation_model, cache_dir
from models.training.pretrain import PretrainConfig

SMALL = PretrainConfig(
    preset="tiny",
    domains=(1, 2),
    tiles_per_domain=16,
    steps=3,
    batch_size=8,
    precision="fp32",
    threads=1,
)


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "spoke"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "spoke"


def test_same_seed_builds_the_same_model_and_then_reuses_it(tmp_path: Path) -> None:
    messages: list[str] = []
    a = build_foundation_model(1, SMALL, tmp_path / "a", log=messages.append, progress=False)
    b = build_foundation_model(1, SMALL, tmp_path / "b", log=lambda _: None, progress=False)
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()
    assert any("building with seed 1" in m for m in messages)
    again = build_foundation_model(1, SMALL, tmp_path / "a", log=messages.append, progress=False)
    assert again == a and "using the cached" in messages[-1]
    assert load_artifact(a).card.metrics["pretrain.seed"] == 1


def test_another_seed_is_another_cache_entry(tmp_path: Path) -> None:
    a = build_foundation_model(1, SMALL, tmp_path, log=lambda _: None, progress=False)
    b = build_foundation_model(2, SMALL, tmp_path, log=lambda _: None, progress=False)
    assert a != b and (a / WEIGHTS_FILE).read_bytes() != (b / WEIGHTS_FILE).read_bytes()


def test_refuses_settings_that_cannot_repeat(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="reproducible"):
        build_foundation_model(0, dataclasses.replace(SMALL, precision="auto"), tmp_path)
