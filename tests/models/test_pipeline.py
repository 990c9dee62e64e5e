"""The pipeline end to end on the tiny artifact: per-tile boxes, per-image labels, overlay."""

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.artifact import Artifact, write_artifact
from models.backends import create_backend
from models.decide import Decision
from models.errors import ModelError, TruncatedImage
from models.images import ImageLimits
from models.pipeline import Pipeline, TileOptions, render_overlay
from models.tiling import TiledImage
from tests.models.helpers import encode, noise_image


@pytest.fixture
def pipeline(tiny_artifact: Artifact) -> Pipeline:
    return Pipeline(
        tiny_artifact, create_backend(tiny_artifact, "onnxruntime"), TileOptions(overlap=8)
    )


def test_run_reports_every_tile_with_its_original_box(pipeline: Pipeline) -> None:
    result = pipeline.run(encode(noise_image(70, 100), "JPEG"))
    assert len(result.tiles) == 4 * 3
    assert result.tiles[-1].box == (68, 38, 100, 70)
    assert set(result.tiles[0].probs) == set(pipeline.card.labels)
    assert set(result.timings) == {"decode", "tile", "infer", "aggregate"}


def test_image_probability_is_the_max_over_tiles(pipeline: Pipeline) -> None:
    result = pipeline.run(encode(noise_image(70, 100), "PNG"))
    for label in pipeline.card.labels:
        assert result.probs[label] == max(t.probs[label] for t in result.tiles)


def test_a_label_the_card_averages_is_the_mean_of_its_tiles_logits(
    tiny_artifact: Artifact, tmp_path: Path
) -> None:
    label = tiny_artifact.card.labels[1]
    spread = write_artifact(tiny_artifact.build_model(), tmp_path / "spread", name="tiny",
                            version="0.1.1", labels=tiny_artifact.card.labels,
                            decision=Decision(mean=(label,)))
    pipeline = Pipeline(spread, create_backend(spread, "onnxruntime"), TileOptions(overlap=8))
    result = pipeline.run(encode(noise_image(70, 100), "PNG"))
    tiles = np.array([t.probs[label] for t in result.tiles], dtype=np.float64)
    logits = np.log(tiles) - np.log1p(-tiles)
    assert result.probs[label] == pytest.approx(1 / (1 + np.exp(-logits.mean())), abs=1e-4)
    assert result.probs[label] < max(tiles)
    other = tiny_artifact.card.labels[0]
    assert result.probs[other] == max(t.probs[other] for t in result.tiles)


def test_steps_compose_like_run(pipeline: Pipeline) -> None:
    data = encode(noise_image(40, 50), "PNG")
    image = pipeline.decode(data)
    tiled = pipeline.tile(image)
    probs = pipeline.backend.infer(pipeline.card.preprocessing.normalize(tiled.tiles))
    assert (
        pipeline.aggregate(image, tiled, probs).to_dict()["tiles"]
        == pipeline.run(data).to_dict()["tiles"]
    )


def test_labels_are_those_at_or_over_their_threshold(pipeline: Pipeline) -> None:
    image = pipeline.decode(encode(noise_image(32, 56), "PNG"))  # two tiles
    tiled = pipeline.tile(image)
    probs = np.array(
        [[0.1, 0.5, 0.2, 0.0, 0.0, 0.9], [0.2, 0.3, 0.49, 0.0, 0.0, 0.1]], dtype=np.float32
    )
    result = pipeline.aggregate(image, tiled, probs)
    assert result.labels == ["crack", "corrosion_stain"]


def test_aggregate_refuses_probabilities_of_the_wrong_shape(pipeline: Pipeline) -> None:
    image = pipeline.decode(encode(noise_image(32, 32), "PNG"))
    tiled = TiledImage(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 4), np.int64), 32, 32)
    with pytest.raises(ModelError, match="do not match 1 tiles x 6 labels"):
        pipeline.aggregate(image, tiled, np.zeros((2, 6), np.float32))


def test_bounds_apply_in_the_pipeline(tiny_artifact: Artifact) -> None:
    pipe = Pipeline(
        tiny_artifact,
        create_backend(tiny_artifact, "torch", "fp32"),
        limits=ImageLimits(max_bytes=10),
    )
    with pytest.raises(Exception, match="10-byte limit"):
        pipe.run(encode(noise_image(8, 8), "PNG"))
    with pytest.raises(TruncatedImage):
        Pipeline(tiny_artifact, pipe.backend).run(encode(noise_image(64, 64), "JPEG")[:400])


def test_overlay_is_a_png_of_the_image_size(pipeline: Pipeline) -> None:
    data = encode(noise_image(70, 100), "JPEG")
    image = pipeline.decode(data)
    png = render_overlay(image, pipeline.run(data))
    with Image.open(io.BytesIO(png)) as im:
        assert (im.format, im.size) == ("PNG", (100, 70))


def test_overlay_is_shrunk_to_its_maximum_side(pipeline: Pipeline) -> None:
    data = encode(noise_image(70, 100), "JPEG")
    png = render_overlay(pipeline.decode(data), pipeline.run(data), max_side=50)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (50, 35)


def test_run_in_chunks_matches_one_big_batch(tiny_artifact: Artifact) -> None:
    backend = create_backend(tiny_artifact, "onnxruntime", batch_size=1)  # chunks of 4 tiles
    pipe = Pipeline(tiny_artifact, backend, TileOptions(overlap=8))
    data = encode(noise_image(70, 100), "PNG")
    image = pipe.decode(data)
    tiled = pipe.tile(image)
    whole = pipe.aggregate(
        image, tiled, backend.infer(pipe.card.preprocessing.normalize(tiled.tiles))
    )
    assert pipe.run(data).to_dict()["tiles"] == whole.to_dict()["tiles"]


def test_run_many_matches_run_in_order_and_reports_bad_images(pipeline: Pipeline) -> None:
    images = {
        "a": encode(noise_image(70, 100, seed=1), "JPEG"),
        "bad": encode(noise_image(40, 40), "JPEG")[:200],
        "b": encode(noise_image(40, 50, seed=2), "PNG"),
    }

    def read(name: str) -> bytes:
        if name not in images:
            raise FileNotFoundError(name)
        return images[name]

    outcomes = list(pipeline.run_many(["a", "bad", "missing", "b"], read))
    assert [item for item, _, _ in outcomes] == ["a", "bad", "missing", "b"]
    for name in ("a", "b"):
        _, prepared, result = next(o for o in outcomes if o[0] == name)
        assert prepared is not None and not isinstance(result, Exception)
        expected = pipeline.run(images[name])
        assert result.probs == expected.probs
        assert [t.box for t in result.tiles] == [t.box for t in expected.tiles]
    assert isinstance(outcomes[1][2], TruncatedImage) and outcomes[1][1] is None
    assert isinstance(outcomes[2][2], FileNotFoundError)


def test_run_many_reads_the_next_image_while_the_current_one_infers(
    tiny_artifact: Artifact,
) -> None:
    """Each inference waits (bounded) for the next image's read to begin: it can only begin
    meanwhile if preparing overlaps inference."""
    names = ["one", "two", "three"]
    started = {name: threading.Event() for name in names}
    overlapped: list[bool] = []
    backend = create_backend(tiny_artifact, "onnxruntime")
    original = backend.infer

    def watching_infer(batch: np.ndarray) -> np.ndarray:
        following = names[len(overlapped) + 1 :]
        overlapped.append(started[following[0]].wait(60) if following else True)
        return original(batch)

    backend.infer = watching_infer  # type: ignore[method-assign]
    pipeline = Pipeline(tiny_artifact, backend, TileOptions(overlap=8))

    def read(name: str) -> bytes:
        started[name].set()
        return encode(noise_image(40, 50, seed=len(name)), "PNG")

    results = list(pipeline.run_many(names, read))
    assert overlapped == [True, True, True]
    assert all(not isinstance(result, Exception) for _, _, result in results)
