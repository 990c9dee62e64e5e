"""Events for the hub: one per image and model, however often a crash makes us repeat it."""

from __future__ import annotations

from pathlib import Path

from daemon.hub.outbox import Outbox
from daemon.uplink.provider import LoadedArtifact
from daemon.uplink.service import event_id
from models.artifact import Artifact


def test_a_repeated_event_id_is_stored_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        outbox.put("detection", {"n": 1}, event_id="abc")
        outbox.put("detection", {"n": 1}, event_id="abc")
        assert len(outbox.pending()) == 1
    finally:
        outbox.close()


def test_the_event_id_depends_on_the_image_and_the_model(
    tiny_artifact: Artifact, tiny_backend: object
) -> None:
    model = LoadedArtifact(tiny_artifact, tiny_backend)  # type: ignore[arg-type]
    first = event_id("a" * 64, model)
    assert first == event_id("a" * 64, LoadedArtifact(tiny_artifact, tiny_backend))  # type: ignore[arg-type]
    assert first != event_id("b" * 64, model)
    assert len(first) <= 64  # the hub's Event.id bound
