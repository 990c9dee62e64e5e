"""Artifact writing and the validation done on every read."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from models.artifact import (
    CARD_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    Artifact,
    load_artifact,
    pack_artifact,
    sha256_file,
    write_artifact,
)
from models.config import tiny_config
from models.decide import Decision
from models.errors import ArtifactError
from models.export import export_onnx
from models.vit import build_model
from tests.models.helpers import copy_artifact


def edit_card(root: Path, **changes: object) -> None:
    card = json.loads((root / CARD_FILE).read_text())
    card.update(changes)
    (root / CARD_FILE).write_text(json.dumps(card))


def test_written_artifact_has_a_complete_card(tiny_artifact: Artifact) -> None:
    card = json.loads((tiny_artifact.root / CARD_FILE).read_text())
    assert card["name"] == "tiny" and card["version"] == "0.1.0"
    assert card["labels"][1] == "crack"
    assert card["preprocessing"]["input_size"] == 32
    assert set(card["thresholds"]) == set(card["labels"])
    assert card["parent"] is None and card["metrics"] == {}
    assert card["files"][ONNX_FILE] == sha256_file(tiny_artifact.root / ONNX_FILE)
    assert card["files"][WEIGHTS_FILE] == sha256_file(tiny_artifact.root / WEIGHTS_FILE)
    assert len(card["golden"]["expected"]) == len(card["golden"]["patterns"])


def test_a_card_says_which_decision_its_thresholds_are_for(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    assert tiny_artifact.card.decision == Decision("tile", 1)
    frame = write_artifact(tiny_artifact.build_model(), tmp_path / "f", name="tiny",
                           version="0.1.1", decision=Decision("frame", 2))
    assert json.loads((frame.root / CARD_FILE).read_text())["decision"] == {
        "unit": "frame", "downscale": 2}
    assert load_artifact(frame.root).card.decision == Decision("frame", 2)


def test_a_card_from_before_decisions_is_per_tile(tiny_artifact: Artifact, tmp_path: Path
                                                  ) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    card = json.loads((root / CARD_FILE).read_text())
    del card["decision"]
    (root / CARD_FILE).write_text(json.dumps(card))
    assert load_artifact(root).card.decision == Decision("tile", 1)


def test_weights_reload_into_the_same_model(tiny_artifact: Artifact) -> None:
    original = build_model(tiny_config(), seed=0)
    reloaded = tiny_artifact.build_model()
    for key, value in original.state_dict().items():
        assert np.array_equal(value.numpy(), reloaded.state_dict()[key].numpy()), key


def test_golden_check_accepts_the_expected_output(tiny_artifact: Artifact) -> None:
    expected = np.asarray(tiny_artifact.card.golden.expected, dtype=np.float32)
    assert tiny_artifact.check_golden(expected) == 0.0


def test_golden_check_refuses_a_wrong_output(tiny_artifact: Artifact) -> None:
    wrong = np.asarray(tiny_artifact.card.golden.expected, dtype=np.float32) + 0.2
    with pytest.raises(ArtifactError, match=r"golden output differs by 0\.2"):
        tiny_artifact.check_golden(wrong)


def test_tar_of_an_artifact_loads(tiny_artifact: Artifact, tmp_path: Path) -> None:
    with (tmp_path / "a.tar").open("wb") as f:
        pack_artifact(tiny_artifact.root, f)
    loaded = load_artifact(tmp_path / "a.tar")
    assert loaded.card == tiny_artifact.card


def test_tar_entries_other_than_the_three_files_are_not_extracted(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    (tmp_path / "evil").write_text("x")
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for f in (CARD_FILE, ONNX_FILE, WEIGHTS_FILE):
            tar.add(tiny_artifact.root / f, arcname=f)
        tar.add(tmp_path / "evil", arcname="../../evil")
    loaded = load_artifact(tmp_path / "a.tar")
    assert sorted(p.name for p in loaded.root.iterdir()) == sorted(
        [CARD_FILE, ONNX_FILE, WEIGHTS_FILE]
    )


def test_tar_with_a_link_in_place_of_a_file_is_refused(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for f in (CARD_FILE, ONNX_FILE):
            tar.add(tiny_artifact.root / f, arcname=f)
        link = tarfile.TarInfo(WEIGHTS_FILE)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ArtifactError, match="must be regular files"):
        load_artifact(tmp_path / "a.tar")


def test_wrong_hash_is_refused(tiny_artifact: Artifact, tmp_path: Path) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    with (root / WEIGHTS_FILE).open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(ArtifactError, match=r"weights.safetensors: sha256 \w+ does not match"):
        load_artifact(root)


def test_missing_file_is_refused(tiny_artifact: Artifact, tmp_path: Path) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    (root / ONNX_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"missing file model\.onnx"):
        load_artifact(root)


def test_missing_card_is_refused(tiny_artifact: Artifact, tmp_path: Path) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    (root / CARD_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"missing file card\.json"):
        load_artifact(root)


def test_card_that_does_not_match_the_graph_is_refused(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    export_onnx(build_model(tiny_config(img_size=64), seed=0), root / ONNX_FILE)
    card = json.loads((root / CARD_FILE).read_text())
    edit_card(root, files={**card["files"], ONNX_FILE: sha256_file(root / ONNX_FILE)})
    with pytest.raises(ArtifactError, match=r"graph input \(None, 3, 64, 64\)"):
        load_artifact(root)


def test_labels_that_do_not_match_the_graph_output_are_refused(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    export_onnx(build_model(tiny_config(num_classes=3), seed=0), root / ONNX_FILE)
    card = json.loads((root / CARD_FILE).read_text())
    edit_card(root, files={**card["files"], ONNX_FILE: sha256_file(root / ONNX_FILE)})
    with pytest.raises(ArtifactError, match=r"graph output \(None, 3\), card has 6 labels"):
        load_artifact(root)


def test_weights_that_do_not_match_the_config_are_refused(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    other = write_artifact(
        build_model(tiny_config(depth=1), seed=0), tmp_path / "other", name="other", version="1.0.0"
    )
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    (root / WEIGHTS_FILE).write_bytes((other.root / WEIGHTS_FILE).read_bytes())
    card = json.loads((root / CARD_FILE).read_text())
    edit_card(root, files={**card["files"], WEIGHTS_FILE: sha256_file(root / WEIGHTS_FILE)})
    with pytest.raises(ArtifactError, match="does not match the card's config"):
        load_artifact(root)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": "1.0"}, "not a semantic version"),
        ({"labels": ["a", "b"]}, "2 labels for a 6-class config"),
        ({"thresholds": {"crack": 0.5}}, "thresholds must name exactly the labels"),
        ({"unexpected": 1}, "unknown keys \\['unexpected'\\]"),
        ({"format": 99}, "format 99 is not 1"),
        ({"config": {"img_size": 32, "bogus": 1}}, "unknown ViTConfig keys: bogus"),
        ({"decision": {"unit": "pixel", "downscale": 1}}, "decision unit 'pixel': must be one of"),
        ({"decision": {"unit": "frame", "downscale": 0}}, "decision downscale 0: must be"),
        ({"decision": {"unit": "frame", "downscale": True}}, "decision downscale True: must be"),
        ({"decision": {"unit": "frame"}}, "decision \\{'unit': 'frame'\\}: must be"),
    ],
)
def test_invalid_card_fields_are_named(
    tiny_artifact: Artifact, tmp_path: Path, changes: dict, message: str
) -> None:
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    edit_card(root, **changes)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(root)


def test_writing_over_a_non_empty_directory_is_refused(tiny_artifact: Artifact) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(build_model(tiny_config()), tiny_artifact.root, name="x", version="0.1.0")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a semantic version"):
        write_artifact(build_model(tiny_config()), tmp_path / "m", name="x", version="v1")
    assert list(tmp_path.iterdir()) == []
