"""What a crash can leave in the results store, and what opening the store does about it."""

from __future__ import annotations

from pathlib import Path

from daemon.uplink.store import NewImage, ResultStore


def _new(image_id: str) -> NewImage:
    return NewImage(id=image_id, content_type="image/png", data=b"png bytes " + image_id.encode())


def test_an_image_file_without_a_row_is_removed_when_the_store_opens(tmp_path: Path) -> None:
    """Fault scenario "power cut mid uplink burst": the file was renamed into place, the row
    never committed, no 202 was sent. The next start deletes the file and counts it; stored
    images and their rows are untouched."""
    store = ResultStore(tmp_path)
    kept = "ab" + "0" * 62
    store.add(_new(kept))
    store.close()
    orphan = tmp_path / "images" / "cd" / ("cd" + "1" * 62)
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a burst")
    temp = tmp_path / "images" / "ab" / f".{'ab' + '2' * 62}.x1y2.tmp"  # atomic_write's temp
    temp.write_bytes(b"never renamed")

    reopened = ResultStore(tmp_path)
    assert reopened.orphans_removed == 2
    assert not orphan.exists() and not temp.exists()
    row = reopened.get(kept)
    assert row is not None and reopened.read_image(row) == b"png bytes " + kept.encode()
    reopened.close()
    assert ResultStore(tmp_path).orphans_removed == 0
