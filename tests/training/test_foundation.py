"""The hub's cached, seed-reproducible foundation model and ``spoke-hub foundation build``."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from appliance.errors import DataError
from models.artifact import WEIGHTS_FILE, load_artifact
from models.data import LABELS
from models.training.foundation import (
    DEFAULT_CONFIG,
    RECIPES,
    build_foundation_model,
    cache_dir,
    native_precision,
)
from models.training.pretrain import fresh_head
from models.vit import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY = RECIPES["tiny"]


def quiet(_: str) -> None:
    pass


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "spoke"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "spoke"


def test_same_seed_builds_the_same_model_and_then_reuses_it(tmp_path: Path) -> None:
    messages: list[str] = []
    a = build_foundation_model(1, TINY, tmp_path / "a", log=messages.append, progress=False)
    b = build_foundation_model(1, TINY, tmp_path / "b", log=quiet, progress=False)
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()
    assert load_artifact(a).card.thresholds == load_artifact(b).card.thresholds
    assert any("building with seed 1" in m for m in messages)
    again = build_foundation_model(1, TINY, tmp_path / "a", log=messages.append, progress=False)
    assert again == a and "using the cached" in messages[-1]


def test_the_card_records_how_the_model_was_made(tmp_path: Path) -> None:
    card = load_artifact(build_foundation_model(3, TINY, tmp_path, log=quiet, progress=False)).card
    m = card.metrics
    assert card.name == "spoke-foundation" and card.labels == LABELS
    assert (m["pretrain.mae"], m["pretrain.supervised"], m["pretrain.trained_head"]) == (1, 1, 1)
    assert m["pretrain.mae_steps"] + m["pretrain.supervised_steps"] == m["pretrain.steps"] == 4
    assert m["pretrain.mae_steps"] == 1  # a quarter of the budget
    assert m["pretrain.seed"] == 3 and m["pretrain.img_size"] == TINY.vit.img_size
    assert [m["data.domain.0"], m["data.domain.1"]] == [1, 2]
    assert m["data.tiles_per_domain"] == 16 and m["calibration.domain"] == 999
    assert m["pretrain.wall_seconds"] >= m["pretrain.seconds"] > 0
    assert m["pretrain.finished_unix"] > 1.7e9
    assert set(card.thresholds) == set(LABELS)
    assert all(0.05 <= t <= 0.95 for t in card.thresholds.values())


def test_the_published_head_is_the_trained_one(tmp_path: Path) -> None:
    model = load_artifact(build_foundation_model(3, TINY, tmp_path, log=quiet)).build_model()
    fresh = build_model(TINY.vit, seed=0)
    fresh_head(fresh, 3 + 1)
    assert not torch.equal(model.head.weight, fresh.head.weight)


def test_another_seed_is_another_cache_entry(tmp_path: Path) -> None:
    a = build_foundation_model(1, TINY, tmp_path, log=quiet, progress=False)
    b = build_foundation_model(2, TINY, tmp_path, log=quiet, progress=False)
    assert a != b and (a / WEIGHTS_FILE).read_bytes() != (b / WEIGHTS_FILE).read_bytes()


def test_refuses_settings_that_cannot_repeat(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="reproducible"):
        build_foundation_model(0, dataclasses.replace(TINY, precision="auto"), tmp_path)


@pytest.mark.parametrize(("flags", "precision"), [
    ("fpu sse2 avx512f avx512_bf16 avx512_vnni", "bf16"),  # AMD Zen 4
    ("fpu sse2 avx512f amx_bf16 amx_tile", "bf16"),  # Intel with AMX
    ("fpu sse2 avx2 avx512f", "fp32"),  # bf16 would be emulated: slower
])
def test_the_default_precision_is_bf16_only_where_the_cpu_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, precision: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {n}\nflags\t\t: {flags}\n\n" for n in (0, 1)))
    assert native_precision(cpuinfo) == precision


def test_without_cpuinfo_the_default_precision_is_fp32(tmp_path: Path) -> None:
    assert native_precision(tmp_path / "missing") == "fp32"
    assert DEFAULT_CONFIG.precision == native_precision()


def hub(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "provisioning", "foundation", "build", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_command_copies_the_cached_model_and_reuses_it(tmp_path: Path) -> None:
    first = hub("--recipe", "tiny", "--out", str(tmp_path / "one"), "--json", cache=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout[first.stdout.index("{") :])
    cached = Path(report["cached"])
    assert cached.parent == tmp_path / "spoke" / "foundation"
    assert report["metrics"]["pretrain.steps"] == 4
    second = hub("--recipe", "tiny", "--out", str(tmp_path / "two"), cache=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "using the cached" in second.stdout and "building" not in second.stdout
    for out in ("one", "two"):
        assert (tmp_path / out / WEIGHTS_FILE).read_bytes() == (cached / WEIGHTS_FILE).read_bytes()
        load_artifact(tmp_path / out)


def test_build_command_refuses_a_used_out_dir_and_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = hub("--recipe", "tiny", "--out", str(tmp_path / "out"), cache=tmp_path)
    assert result.returncode == 2 and "not an empty directory" in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "spoke").exists(), "nothing is built before the refusal"


def test_build_command_refuses_a_bad_budget(tmp_path: Path) -> None:
    result = hub(
        "--recipe", "tiny", "--budget", "ten", "--out", str(tmp_path / "o"), cache=tmp_path
    )
    assert result.returncode == 2 and "not a duration" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_time_budget_builds_and_says_it_is_not_reproducible(tmp_path: Path) -> None:
    result = hub("--recipe", "tiny", "--budget", "1s", "--out", str(tmp_path / "o"), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "time budget" in result.stdout
    assert load_artifact(tmp_path / "o").card.metrics["pretrain.steps"] >= 2
