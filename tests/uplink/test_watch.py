"""The watch folder: each image ingested exactly once, partial copies waited for, then moved."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from daemon.uplink.watch import WatchFolder
from tests.uplink.conftest import Uplink, image_bytes

FAST = {"watch_interval_s": 0.05, "watch_stable_s": 0.3, "watch_incomplete_s": 0.6}


async def _until(check: Any, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := check()):
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
    return result


async def _rows(uplink: Uplink) -> list[dict[str, Any]]:
    rows, _ = await uplink.service.query("page", limit=500)
    return list(rows)


async def test_a_dropped_image_is_ingested_once_and_moved_to_processed(
    make_uplink: Any, tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    uplink: Uplink = await make_uplink(watch_dir=str(watch), **FAST)
    (watch / "flight-3").mkdir(parents=True)
    (watch / "flight-3" / "IMG_0001.png").write_bytes(image_bytes(seed=1))
    moved = watch / "processed" / "flight-3" / "IMG_0001.png"
    await _until(moved.exists)
    await asyncio.sleep(0.5)  # several more scans: nothing is ingested again
    (row,) = await _rows(uplink)
    assert row["source"] == "watch" and row["mission"] == "flight-3"
    assert not (watch / "flight-3" / "IMG_0001.png").exists()


async def test_a_file_still_being_written_waits_until_its_size_is_stable(
    make_uplink: Any, tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    uplink: Uplink = await make_uplink(
        watch_dir=str(watch), watch_interval_s=0.05, watch_stable_s=1.0
    )
    data = image_bytes(256, 192, seed=2)
    path = watch / "IMG_0002.png"
    with path.open("wb") as f:
        for i in range(0, len(data), len(data) // 6 + 1):  # a slow copy, 6 writes
            f.write(data[i : i + len(data) // 6 + 1])
            f.flush()
            await asyncio.sleep(0.3)
            assert await _rows(uplink) == []  # never taken half-written
    await _until(lambda: (watch / "processed" / "IMG_0002.png").exists())
    (row,) = await _rows(uplink)
    assert row["bytes"] == len(data)


async def test_a_corrupt_file_moves_to_failed_with_the_reason(
    make_uplink: Any, tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    await make_uplink(watch_dir=str(watch), **FAST)
    (watch / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    reason = watch / "failed" / "broken.jpg.reason.txt"
    await _until(reason.exists)
    assert (watch / "failed" / "broken.jpg").exists()
    assert "JPEG" in reason.read_text() or "corrupt" in reason.read_text()


async def test_an_unsupported_file_moves_to_failed(make_uplink: Any, tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    await make_uplink(watch_dir=str(watch), **FAST)
    (watch / "notes.txt").write_text("flight notes")
    await _until((watch / "failed" / "notes.txt.reason.txt").exists)


async def test_an_image_already_known_is_moved_not_ingested_again(
    make_uplink: Any, tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    uplink: Uplink = await make_uplink(watch_dir=str(watch), **FAST)
    data = image_bytes(seed=4)
    assert (await uplink.post(data)).status == 202
    (watch / "again.png").write_bytes(data)
    await _until((watch / "processed" / "again.png").exists)
    assert len(await _rows(uplink)) == 1


def test_partial_copy_names_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    folder = WatchFolder(tmp_path, stable_s=0)
    for name in ("a.jpg.part", ".b.jpg", "c.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert folder.scan() == []


def test_same_name_twice_keeps_both_in_processed(tmp_path: Path) -> None:
    folder = WatchFolder(tmp_path, stable_s=0)
    for content in (b"one", b"two"):
        (tmp_path / "IMG.jpg").write_bytes(content)
        folder.done(tmp_path / "IMG.jpg", "id")
    assert sorted(p.read_bytes() for p in (tmp_path / "processed").iterdir()) == [b"one", b"two"]


async def test_a_copy_that_stalls_longer_than_stable_s_is_held_and_taken_when_it_resumes(
    make_uplink: Any, tmp_path: Path
) -> None:
    """Fault scenario "watch-folder stall": half a JPEG sits unchanged past ``watch_stable_s``
    (it is tried and refused as corrupt), then the copy resumes: the whole image is ingested and
    nothing lands in ``failed/``."""
    watch = tmp_path / "watch"
    uplink: Uplink = await make_uplink(watch_dir=str(watch), watch_interval_s=0.05,
                                       watch_stable_s=0.2, watch_incomplete_s=30)
    data = image_bytes(256, 192, seed=7, fmt="JPEG")
    path = watch / "IMG_0007.jpg"
    path.write_bytes(data[: len(data) // 2])
    await asyncio.sleep(1.5)  # several times stable_s: the half file was offered and refused
    assert await _rows(uplink) == []
    assert path.exists() and not list((watch / "failed").iterdir())
    with path.open("ab") as f:
        f.write(data[len(data) // 2 :])
    await _until(lambda: (watch / "processed" / "IMG_0007.jpg").exists())
    (row,) = await _rows(uplink)
    assert row["bytes"] == len(data) and not list((watch / "failed").iterdir())


def test_a_refused_file_that_never_grows_fails_after_incomplete_s(tmp_path: Path) -> None:
    folder = WatchFolder(tmp_path, stable_s=1, incomplete_s=10)
    path = tmp_path / "half.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    assert folder.scan(now=0) == [] and folder.scan(now=1) == [path]
    assert folder.fail(path, "truncated", now=1) is None  # held: it may still grow
    assert folder.scan(now=5) == []
    assert folder.scan(now=10) == [path]
    moved = folder.fail(path, "truncated", now=10)
    assert moved == tmp_path / "failed" / "half.jpg" and not path.exists()
