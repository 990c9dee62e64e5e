"""``spoke run``'s model loader says whether ``auto`` measured or reused its stored pick."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from daemon.uplink.provider import StaticModel, StaticModelLoader
from models.artifact import Artifact


async def load_once(artifact: Artifact) -> None:
    loaded = asyncio.Event()
    loader = StaticModelLoader(StaticModel(artifact.root), on_loaded=lambda _: loaded.set())
    await loader.start()
    try:
        await asyncio.wait_for(loaded.wait(), 240)
    finally:
        await loader.stop()


async def test_model_loaded_log_says_measured_then_cache(
    tiny_artifact: Artifact,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SPOKE_ENGINE_CACHE", str(tmp_path / "engines"))
    with caplog.at_level(logging.INFO, logger="daemon.uplink.provider"):
        await load_once(tiny_artifact)
        await load_once(tiny_artifact)
    choices = [r.engine_choice for r in caplog.records if r.getMessage() == "model loaded"]
    assert choices == ["measured", "cache"]
