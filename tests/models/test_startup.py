"""Start-up: serving a verified artifact on a cached ONNX Runtime pick imports neither torch nor
onnx (seconds of start-up each), and the verdict that lets it skip them is kept per card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.artifact import Artifact, load_artifact, write_artifact
from models.config import tiny_config
from models.errors import ArtifactError
from models.vit import build_model
from tests.support.fleet import REPO

#: Runs the real ``spoke`` CLI in a fresh interpreter and reports which heavy libraries it
#: imported along the way.
PROBE = """
import json, sys
from daemon.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "imported": [m for m in ("torch", "onnx") if m in sys.modules]}),
      file=sys.stderr)
"""


def run_spoke(args: list[str], cache: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=REPO, env=os.environ | {"SPOKE_ENGINE_CACHE": str(cache)},
                          timeout=600)
    result: dict[str, object] = json.loads(proc.stderr.strip().splitlines()[-1])
    result["stdout"] = proc.stdout
    return result


def test_second_infer_on_a_cached_pick_imports_neither_torch_nor_onnx(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)).save(image)
    args = ["infer", str(image), "--model", str(tiny_artifact.root), "--backend",
            "onnxruntime", "--json"]
    first = run_spoke(args, tmp_path / "cache")
    assert first["rc"] == 0
    assert set(first["imported"]) == {"torch", "onnx"}  # the first load checks graph and weights
    second = run_spoke(args, tmp_path / "cache")
    assert second["rc"] == 0 and second["imported"] == []
    results = [json.loads(str(r["stdout"]))["results"][0]["probs"] for r in (first, second)]
    assert results[0] == results[1]


def test_the_verdict_is_per_card_so_a_tampered_copy_is_checked_again(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    load_artifact(tiny_artifact.root)  # the verdict for these bytes is now cached
    bad = tmp_path / "bad"
    write_artifact(build_model(tiny_config(), seed=1), bad, name="tiny", version="0.1.0")
    card = json.loads((bad / "card.json").read_text())
    card["config"]["depth"] = 1  # the weights no longer match; the file hashes still do
    (bad / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="does not match the card's config"):
        load_artifact(bad)


def test_an_unwritable_cache_only_means_checking_every_time(
    tiny_artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "not-a-dir"
    cache.write_text("a file where the cache directory should be\n")
    monkeypatch.setenv("SPOKE_ENGINE_CACHE", str(cache))
    assert load_artifact(tiny_artifact.root).signature == tiny_artifact.signature


def test_a_corrupt_verdict_record_is_ignored(
    tiny_artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOKE_ENGINE_CACHE", str(tmp_path))
    load_artifact(tiny_artifact.root)
    (record,) = (tmp_path / "verified").iterdir()
    record.write_text("{not json")
    assert load_artifact(tiny_artifact.root).signature == tiny_artifact.signature
