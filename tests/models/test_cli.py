"""``spoke model``, ``spoke infer`` and ``spoke bench``, called through the real CLI entry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from models.artifact import Artifact, load_artifact
from tests.models.helpers import encode, noise_image


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(noise_image(40, 70), "JPEG"))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    also_good = tmp_path / "also.png"
    also_good.write_bytes(encode(noise_image(32, 32), "PNG"))
    return [good, empty, also_good]


@pytest.mark.slow
def test_model_create_writes_a_valid_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    code = main(
        [
            "models",
            "create",
            "--preset",
            "vit-tiny-p16-112",
            "--labels",
            "crack",
            "rust",
            "--name",
            "site-a",
            "--version",
            "1.2.3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    card = load_artifact(out).card
    assert (card.ref, card.labels, card.config.img_size) == ("site-a@1.2.3", ("crack", "rust"), 112)
    assert "wrote site-a@1.2.3" in capsys.readouterr().out


def test_model_create_refuses_a_bad_version_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "models",
            "create",
            "--preset",
            "vit-tiny-p16-112",
            "--version",
            "one",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == "spoke: error: version 'one' is not a semantic version"
    )


def test_model_show_prints_the_card(
    tiny_artifact: Artifact, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "show", str(tiny_artifact.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"


def test_infer_reports_a_bad_file_and_goes_on(
    tiny_artifact: Artifact, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "infer",
            *map(str, images),
            "--model",
            str(tiny_artifact.root),
            "--backend",
            "torch",
            "--json",
        ]
    )
    assert code == 1
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["ok"] for r in results] == [True, False, True]
    assert results[1]["error_type"] == "EmptyImage"
    assert len(results[0]["tiles"]) == 3 * 2  # overlap 4 (a seventh of 32)
    assert results[2]["image"]["width"] == 32


def test_infer_exit_code_is_zero_when_every_file_worked(
    tiny_artifact: Artifact, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["infer", str(images[0]), "--model", str(tiny_artifact.root), "--backend", "onnxruntime"]
    )
    assert code == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"{images[0]}: ")
    assert "onnxruntime/fp32" in out.err


def test_infer_auto_measures_once_then_reuses_the_pick(
    tiny_artifact: Artifact,
    images: list[Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SPOKE_ENGINE_CACHE", str(tmp_path / "engines"))
    args = ["infer", str(images[2]), "--model", str(tiny_artifact.root)]
    assert main(args) == 0
    first = capsys.readouterr().err
    assert "; auto measured torch/fp32 " in first
    assert "and stored the pick" in first
    assert main(args) == 0
    second = capsys.readouterr().err
    assert "auto: the stored pick from the engine cache (--remeasure to measure again)" in second
    assert first.split(";")[0] == second.split(";")[0]
    assert main([*args, "--remeasure"]) == 0
    assert "; auto measured torch/fp32 " in capsys.readouterr().err


def test_infer_writes_one_overlay_per_image(
    tiny_artifact: Artifact, images: list[Path], tmp_path: Path
) -> None:
    main(
        [
            "infer",
            str(images[0]),
            str(images[2]),
            "--model",
            str(tiny_artifact.root),
            "--backend",
            "torch",
            "--overlay",
            str(tmp_path / "heat.png"),
        ]
    )
    for name, size in (("heat-good.png", (70, 40)), ("heat-also.png", (32, 32))):
        with Image.open(tmp_path / name) as im:
            assert im.size == size


def test_infer_with_a_broken_model_is_one_line(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["infer", str(images[0]), "--model", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"spoke: error: {tmp_path}: missing file card.json"


def test_bench_quick_reports_ratios_against_the_naive_baseline(
    tiny_artifact: Artifact, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", "--quick", "--json", "--model", str(tiny_artifact.root), "--size", "96x64"]
    )
    assert code == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert res["image"]["tiles"] == 4 * 3
    configs = {r["config"] for r in res["rows"]}
    assert {"torch/fp32", "onnxruntime/fp32"} <= configs
    for row in res["rows"]:
        if "skipped" not in row:
            assert row["e2e_vs_naive"] > 0 and row["gflops_model"] > 0
            assert (row["int8_vs_fp32"] is None) == ("int8" not in row["config"])
    assert res["gflop_per_tile"] == tiny_artifact.card.config.flops_per_image() / 1e9
    assert res["auto"]["pick"] in res["auto"]["rates"]
    assert set(res["targets"]) >= {"e2e_speedup_met", "e2e_speedup_target"}


def test_spoke_infer_runs_as_a_process(tiny_artifact: Artifact, images: list[Path]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "infer",
            str(images[1]),
            str(images[0]),
            "--model",
            str(tiny_artifact.root),
            "--backend",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert f"{images[1]}: error: empty file (0 bytes)" in proc.stderr
    assert proc.stdout.startswith(f"{images[0]}: ")
