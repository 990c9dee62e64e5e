"""The generator: determinism, domains, label semantics, geometry."""

import numpy as np
import pytest

from models.data import BACKGROUND, DEFECTS, LABELS, Domain, render_frame, render_tile, tile_arrays
from models.data.domain import MATERIALS


def test_same_seed_gives_the_same_tile() -> None:
    a = render_tile(Domain.from_seed(11), 7, 64)
    b = render_tile(Domain.from_seed(11), 7, 64)
    assert np.array_equal(a.image, b.image)
    assert a.labels == b.labels and a.boxes == b.boxes


def test_another_index_gives_another_tile() -> None:
    dom = Domain.from_seed(11)
    assert not np.array_equal(render_tile(dom, 0, 64).image, render_tile(dom, 1, 64).image)


def test_order_of_generation_does_not_matter() -> None:
    forward, _ = tile_arrays([4], per_domain=6, size=48)
    late, _ = tile_arrays([4], per_domain=3, size=48, start=3)
    assert np.array_equal(forward[3:], late)


@pytest.mark.parametrize("size", [32, 77, 112])
def test_tiles_come_in_any_size(size: int) -> None:
    sample = render_tile(Domain.from_seed(1), 0, size)
    assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8


def test_domains_differ_in_appearance() -> None:
    """Sites differ in cement tone, so mean colours of their tiles differ beyond sampling noise."""
    means = {}
    for seed in (1, 2):
        images, _ = tile_arrays([seed], per_domain=12, size=48)
        means[seed] = images.reshape(-1, 3).mean(axis=0)
    assert np.abs(means[1] - means[2]).max() > 5.0
    assert Domain.from_seed(1) != Domain.from_seed(2)


def test_background_is_exclusive_and_labels_are_known() -> None:
    dom = Domain.from_seed(5)
    seen: set[str] = set()
    for i in range(60):
        labels = render_tile(dom, i, 48).labels
        assert labels <= set(LABELS) and labels
        assert BACKGROUND not in labels or labels == {BACKGROUND}
        seen |= labels
    assert seen == set(LABELS), "60 tiles should show every label at least once"


def test_labels_are_the_painted_boxes() -> None:
    """A label is claimed exactly when something of that kind was painted inside the tile."""
    dom = Domain.from_seed(9)
    for i in range(30):
        sample = render_tile(dom, i, 64)
        kinds = {b[0] for b in sample.boxes}
        assert sample.labels == (kinds or {BACKGROUND})
        for _, x0, y0, x1, y1 in sample.boxes:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_defects_change_the_pixels_inside_their_box() -> None:
    """Painting is local: the defect's box differs from the same tile's surface statistics."""
    dom = Domain.from_seed(3)
    for i in range(40):
        sample = render_tile(dom, i, 112)
        for label, x0, y0, x1, y1 in sample.boxes:
            if label in ("crack", "exposed_bars") and (x1 - x0) * (y1 - y0) < 112 * 112 // 3:
                inside = sample.image[y0:y1, x0:x1].astype(float)
                assert inside.std() > 8.0, f"tile {i}: {label} box looks like flat surface"


def test_exposed_bars_sit_in_a_spall() -> None:
    dom = Domain.from_seed(2)
    tiles = [render_tile(dom, i, 64) for i in range(40)]
    with_bars = [t for t in tiles if "exposed_bars" in t.labels]
    assert with_bars and all("spallation" in t.labels for t in with_bars)


def test_frame_boxes_lie_in_the_frame() -> None:
    frame = render_frame(Domain.from_seed(1), 3, width=640, height=480)
    assert frame.image.shape == (480, 640, 3)
    for label, x0, y0, x1, y1 in frame.boxes:
        assert label in DEFECTS
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_sites_differ_in_material_and_each_is_deterministic() -> None:
    materials = {Domain.from_seed(seed).material for seed in range(1, 60)}
    assert materials == set(MATERIALS)
    for material in MATERIALS:
        seed = next(s for s in range(1, 60) if Domain.from_seed(s).material == material)
        a = render_tile(Domain.from_seed(seed), 3, 96)
        b = render_tile(Domain.from_seed(seed), 3, 96)
        assert np.array_equal(a.image, b.image), material


def test_camera_artefacts_vary_between_tiles_of_a_site() -> None:
    """Exposure, blur, scale and JPEG quality change per image: tiles of one site differ in
    brightness and sharpness, not only in what is painted on them."""
    dom = Domain.from_seed(5)
    tiles = [render_tile(dom, i, 96).image.astype(np.float32) for i in range(12)]
    brightness = [t.mean() for t in tiles]
    sharpness = [np.abs(np.diff(t.mean(axis=2), axis=1)).mean() for t in tiles]
    assert np.std(brightness) > 2 and max(sharpness) > 1.3 * min(sharpness)
