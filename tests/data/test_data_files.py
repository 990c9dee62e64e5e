"""Labeled sets on disk: labels.csv, boxes.json, EXIF, and the ``spoke-hub data`` command."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from appliance.errors import DataError
from models.data import (
    BOXES_JSON,
    LABELS_CSV,
    Domain,
    read_labels,
    render_tile,
    write_frames,
    write_tiles,
)
from provisioning.cli import main


def test_tiles_round_trip_through_labels_csv(tmp_path: Path) -> None:
    rows = write_tiles(tmp_path / "set", domain=4, count=8, size=40)
    assert read_labels(tmp_path / "set") == rows
    first = np.asarray(Image.open(tmp_path / "set" / rows[0].file))
    assert np.array_equal(first, render_tile(Domain.from_seed(4), 0, 40).image)


def test_labels_csv_is_plain_and_documented(tmp_path: Path) -> None:
    write_tiles(tmp_path / "set", domain=4, count=3, size=32)
    lines = (tmp_path / "set" / LABELS_CSV).read_text().splitlines()
    assert lines[0] == "file,labels"
    assert all(line.startswith("tile_") and line.count(",") == 1 for line in lines[1:])


def test_refuses_to_write_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty directory"):
        write_tiles(tmp_path / "x", domain=1, count=1, size=32)


def test_frames_carry_exif_gps_and_boxes(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    rows = write_frames(out, domain=6, count=2, width=320, height=240)
    boxes = json.loads((out / BOXES_JSON).read_text())
    assert set(boxes) == {r.file for r in rows}
    meta = boxes[rows[1].file]
    with Image.open(out / rows[1].file) as im:
        assert im.format == "JPEG" and im.size == (320, 240)
        exif = im.getexif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    lat = sum(float(v) / 60**i for i, v in enumerate(gps[ExifTags.GPS.GPSLatitude]))
    lon = sum(float(v) / 60**i for i, v in enumerate(gps[ExifTags.GPS.GPSLongitude]))
    assert lat == pytest.approx(meta["latitude"], abs=1e-6)
    assert lon == pytest.approx(abs(meta["longitude"]), abs=1e-6)
    assert float(gps[ExifTags.GPS.GPSAltitude]) == pytest.approx(meta["altitude_m"])
    stamp = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal]
    assert stamp == meta["time"][:19].replace("-", ":").replace("T", " ")
    labels = {r.file: r.labels for r in rows}
    for name, entry in boxes.items():
        assert {b["label"] for b in entry["boxes"]} == (labels[name] - {"background"})


def test_frames_from_first_are_the_same_frames_as_in_a_larger_set(tmp_path: Path) -> None:
    whole = write_frames(tmp_path / "whole", domain=6, count=3, width=160, height=120)
    later = write_frames(tmp_path / "later", domain=6, count=2, width=160, height=120, first=1)
    assert [r.file for r in later] == ["frame_00001.jpg", "frame_00002.jpg"]
    assert later == whole[1:]
    for row in later:
        assert (tmp_path / "later" / row.file).read_bytes() == \
            (tmp_path / "whole" / row.file).read_bytes()
    boxes = json.loads((tmp_path / "later" / BOXES_JSON).read_text())
    assert boxes == {k: v for k, v in json.loads(
        (tmp_path / "whole" / BOXES_JSON).read_text()).items() if k in boxes}


@pytest.mark.parametrize("extra", [["--frames", "1", "--first", "-1"],
                                   ["--tiles", "1", "--first", "2"]])
def test_cli_refuses_first_unless_a_frame_index_with_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    argv = ["data", "generate", "--domain", "2", *extra, "--out", str(tmp_path / "f")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spoke-hub: error: --first") and "\n" not in err
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
def test_full_size_drone_frame(tmp_path: Path) -> None:
    rows = write_frames(tmp_path / "f", domain=2, count=1)
    with Image.open(tmp_path / "f" / rows[0].file) as im:
        assert im.size == (4000, 3000)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.png,crack;rust", "unknown labels rust"),
        ("a.png,background;crack", "'background' alone"),
        ("missing.png,crack", "no image file"),
        ("../a.png,crack", "no image file"),
        ("a.png,crack,extra", "expected 2 fields"),
    ],
)
def test_bad_labels_csv_is_refused_with_the_line(tmp_path: Path, row: str, message: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / LABELS_CSV).write_text(f"file,labels\n{row}\n")
    with pytest.raises(DataError, match=message) as info:
        read_labels(tmp_path)
    assert ":2:" in str(info.value)


def test_cli_generates_tiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "generate", "--domain", "2", "--tiles", "5", "--size", "32"]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 0
    assert len(read_labels(tmp_path / "t")) == 5
    assert "wrote 5 images" in capsys.readouterr().out


def test_cli_refuses_bad_sizes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "generate", "--domain", "2", "--frames", "1", "--frame-size", "big"]
    assert main([*argv, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spoke-hub: error: --frame-size") and "\n" not in err


def _generate_tiles(out: Path, *, terminal: bool) -> bytes:
    """Run ``spoke-hub data generate`` as a real process, its stderr a pipe or a terminal."""
    argv = [sys.executable, "-m", "provisioning", "data", "generate", "--domain", "2"]
    argv += ["--tiles", "5", "--size", "32", "--out", str(out)]
    if not terminal:
        return subprocess.run(argv, capture_output=True, check=True, timeout=120).stderr
    primary, secondary = pty.openpty()
    # a terminal of 0 columns (what a bare pty reports) draws an empty bar: give it a width
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal's other end closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks)


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    """CI logs and redirected output get plain status lines, no carriage-return bar spam; a
    terminal gets the bar."""
    piped = _generate_tiles(tmp_path / "piped", terminal=False)
    assert b"\r" not in piped
    assert b"tiles (domain 2): 5/5 tile (100 %)" in piped
    assert b"tiles (domain 2)" in _generate_tiles(tmp_path / "tty", terminal=True)
