"""Fixtures the whole suite shares: one definition each, found by every test folder."""

from __future__ import annotations

import pytest

from models.artifact import Artifact, write_artifact
from models.config import tiny_config
from models.vit import build_model


@pytest.fixture(autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantised graphs, engines and engine choices (models.cache) go to a per-session
    directory, for the test's own process and the daemons it starts, never to ~/.cache."""
    monkeypatch.setenv("SPOKE_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "engines"))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """One tiny artifact per session (32 px, dim 32, depth 2) keeps the suite fast."""
    model = build_model(tiny_config(), seed=0)
    return write_artifact(
        model, tmp_path_factory.mktemp("art") / "tiny", name="tiny", version="0.1.0"
    )
