"""Tiling geometry: coverage, exact boxes, overlap at the edges, padding and downscale."""

import itertools

import numpy as np
import pytest

from models.errors import ModelError
from models.tiling import tile_image, tile_positions
from tests.models.helpers import noise_image


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(100, 32, 8), (96, 32, 0), (33, 32, 4), (32, 32, 16), (4000, 224, 32)],
)
def test_positions_cover_the_axis_without_leaving_it(length: int, tile: int, overlap: int) -> None:
    starts = tile_positions(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + tile == length
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (33, 32, 4), (250, 64, 0)])
def test_neighbours_overlap_by_at_least_the_overlap_and_the_edge_tile_more(
    length: int, tile: int, overlap: int
) -> None:
    starts = tile_positions(length, tile, overlap)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(tile - g == overlap for g in gaps[:-1])
    assert tile - gaps[-1] >= overlap


def test_100px_with_32px_tiles_and_8px_overlap() -> None:
    assert tile_positions(100, 32, 8) == [0, 24, 48, 68]


def test_invalid_overlap_is_refused() -> None:
    with pytest.raises(ModelError, match="0 <= overlap < tile"):
        tile_positions(100, 32, 32)


def test_boxes_map_back_to_exactly_the_tile_pixels() -> None:
    pixels = noise_image(70, 100)
    tiled = tile_image(pixels, 32, overlap=8)
    assert len(tiled.tiles) == 4 * 3
    for tile, (x0, y0, x1, y1) in zip(tiled.tiles, tiled.boxes, strict=True):
        assert (x1 - x0, y1 - y0) == (32, 32)
        assert np.array_equal(tile, pixels[y0:y1, x0:x1])


def test_tiles_cover_every_pixel() -> None:
    tiled = tile_image(noise_image(70, 100), 32, overlap=5)
    covered = np.zeros((70, 100), bool)
    for x0, y0, x1, y1 in tiled.boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_a_small_image_is_one_padded_tile_whose_box_is_the_image() -> None:
    pixels = noise_image(20, 25)
    tiled = tile_image(pixels, 32, overlap=4, pad_value=(1, 2, 3))
    assert tiled.boxes.tolist() == [[0, 0, 25, 20]]
    assert np.array_equal(tiled.tiles[0, :20, :25], pixels)
    assert (tiled.tiles[0, 20:, :] == (1, 2, 3)).all()
    assert (tiled.tiles[0, :, 25:] == (1, 2, 3)).all()


def test_downscaled_boxes_are_in_original_pixels() -> None:
    pixels = noise_image(128, 192)
    tiled = tile_image(pixels, 32, overlap=0, downscale=2)
    assert len(tiled.tiles) == 3 * 2
    assert tiled.boxes.tolist()[-1] == [128, 64, 192, 128]
    # A tile is the box-average of its box in the original image.
    x0, y0, x1, y1 = tiled.boxes[4]
    block = pixels[y0:y1, x0:x1].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(tiled.tiles[4].astype(float) - block).max() <= 1


def test_downscale_with_a_remainder_clips_the_last_box_to_the_image() -> None:
    tiled = tile_image(noise_image(65, 65), 32, overlap=0, downscale=2)
    assert tiled.boxes.max(axis=0).tolist()[2:] == [65, 65]
