"""How tiles become an image's probabilities, and what a card's decision may say."""

import json
from pathlib import Path

import numpy as np
import pytest

from models.artifact import CARD_FILE, Artifact, ArtifactError, load_artifact, write_artifact
from models.decide import PER_TILE, Decision, image_probs
from models.errors import ModelError
from tests.models.helpers import copy_artifact


def test_an_image_is_the_max_over_its_tiles_or_for_averaged_labels_their_mean_logit() -> None:
    # Two images: tiles 0-1 and tile 2. Logits 2.197 and -2.197 average to 0 (p = 0.5).
    probs = np.array([[0.9, 0.9], [0.1, 0.1], [0.3, 0.3]], dtype=np.float32)
    owner = np.array([0, 0, 1])
    spread = Decision(mean=("salt",))
    out = image_probs(probs, owner, 2, ("crack", "salt"), spread)
    np.testing.assert_allclose(out, [[0.9, 0.5], [0.3, 0.3]], atol=1e-6)
    np.testing.assert_allclose(image_probs(probs, owner, 2, ("crack", "salt"), PER_TILE),
                               [[0.9, 0.9], [0.3, 0.3]])


def test_a_decision_without_averaged_labels_keeps_its_two_keys() -> None:
    assert PER_TILE.to_dict() == {"unit": "tile", "downscale": 1}
    spread = Decision("frame", 2, ("salt",))
    assert spread.to_dict() == {"unit": "frame", "downscale": 2, "mean": ["salt"]}
    assert Decision.from_dict(spread.to_dict()) == spread
    assert "salt on the mean over the tiles" in str(spread)


@pytest.mark.parametrize(("data", "error"), [
    ({"unit": "tile", "downscale": 1, "mean": "salt"}, "must be a list of label names"),
    ({"unit": "tile", "downscale": 1, "mean": ["salt", "salt"]}, "must be distinct label names"),
    ({"unit": "tile", "downscale": 1, "mean": [""]}, "must be distinct label names"),
    ({"unit": "tile", "downscale": 1, "mean": [3]}, "must be distinct label names"),
    ({"unit": "tile", "downscale": 1, "mean": ["background"]}, "never averaged"),
    ({"unit": "tile", "downscale": 1, "max": ["crack"]}, "optionally \"mean\""),
])
def test_a_bad_averaged_label_list_is_refused(data: dict[str, object], error: str) -> None:
    with pytest.raises(ModelError, match=error):
        Decision.from_dict(data)


def test_a_card_may_average_only_its_own_labels(tiny_artifact: Artifact, tmp_path: Path
                                                ) -> None:
    model = tiny_artifact.build_model()
    with pytest.raises(ArtifactError, match=r"averages labels the card does not have: \['rust'\]"):
        write_artifact(model, tmp_path / "bad", name="tiny", version="0.1.1",
                       labels=tiny_artifact.card.labels, decision=Decision(mean=("rust",)))
    assert not (tmp_path / "bad").exists()
    root = copy_artifact(tiny_artifact, tmp_path / "a")
    card = json.loads((root / CARD_FILE).read_text())
    card["decision"]["mean"] = ["rust"]
    (root / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="averages labels the card does not have"):
        load_artifact(root)
    label = tiny_artifact.card.labels[1]
    good = write_artifact(model, tmp_path / "good", name="tiny", version="0.1.1",
                          labels=tiny_artifact.card.labels, decision=Decision(mean=(label,)))
    assert load_artifact(good.root).card.decision.mean == (label,)
