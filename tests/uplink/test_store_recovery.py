"""What a crash can leave in the results store, and what opening the store does about it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from daemon.uplink.store import NewImage, ResultStore
from tests.support.tmpfs import tmpfs
from tests.uplink.conftest import Uplink, image_bytes


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


async def test_a_full_data_partition_refuses_with_507_and_loses_nothing(
    make_uplink: Any, tmp_path: Path
) -> None:
    """Fault scenario "data partition full" (a real 256 KiB tmpfs as the uplink's root): past
    the last byte, posts get 507 ``storage_full`` (counted), not a 500; images already taken
    wait instead of stopping the worker; once the partition grows, every one is processed and
    new images are taken again."""
    root = tmp_path / "uplink"
    with tmpfs(root, "256k"):
        uplink: Uplink = await make_uplink(root=root)
        accepted, refusal = [], None
        for seed in range(200):
            resp = await uplink.post(image_bytes(64, 48, seed=seed))
            if resp.status != 202:
                refusal = (resp.status, await resp.json())
                break
            accepted.append((await resp.json())["id"])
        assert refusal is not None and accepted, "the partition never filled"
        status, body = refusal
        assert status == 507 and body["error"] == "storage_full", refusal
        assert uplink.dropped("storage_full") == 1
        subprocess.run(["mount", "-o", "remount,size=8m", str(root)], check=True)
        for image_id in accepted:
            assert (await uplink.wait_done(image_id, timeout=60))["status"] == "done"
        assert (await uplink.post(image_bytes(64, 48, seed=999))).status == 202
        on_disk = {p.name for p in (root / "images").glob("*/*")}
        rows, _ = await uplink.service.query("page", limit=500)
        assert on_disk == {r["id"] for r in rows}
