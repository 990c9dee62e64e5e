"""The boot test's ESP check (image/boottest.py `fat_check`) on real FAT images made with
mkfs.vfat and mcopy and checked with the real fsck.fat: after a power cut the "mounted" flag
Linux leaves in the boot sector is expected and reported, never counted as clean after a clean
shutdown, and never hides damage."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BOOTTEST = Path(__file__).resolve().parents[2] / "image" / "boottest.py"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.vfat", "mcopy", "fsck.fat")),
    reason="needs dosfstools and mtools",
)


def load_boottest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("boottest", BOOTTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["boottest"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


boottest = load_boottest()

#: Offset of the boot sector's state byte, whose bit 0 Linux sets while the FAT is mounted.
STATE = {32: 0x41, 16: 0x25}


def esp(tmp_path: Path, bits: int = 32) -> Path:
    """A FAT volume holding one file, as the ESP holds the UKIs."""
    raw = tmp_path / f"esp{bits}.raw"
    with raw.open("wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.vfat", "-F", str(bits), str(raw)], check=True, capture_output=True)
    payload = tmp_path / "spoke_2.efi"
    payload.write_bytes(b"MZ" + bytes(range(256)) * 40)
    subprocess.run(["mcopy", "-i", str(raw), str(payload), "::/spoke_2.efi"], check=True)
    return raw


def mark_mounted(raw: Path, bits: int = 32) -> None:
    """What Linux's vfat does to the primary boot sector on a read-write mount."""
    with raw.open("r+b") as f:
        f.seek(STATE[bits])
        state = f.read(1)[0]
        f.seek(STATE[bits])
        f.write(bytes([state | 1]))


def break_the_file(raw: Path) -> None:
    """Zero the file's first cluster in every FAT: its chain ends at a free cluster."""
    boot = raw.read_bytes()[:512]
    reserved = int.from_bytes(boot[14:16], "little")
    fats = boot[16]
    fat_size = int.from_bytes(boot[36:40], "little")  # FAT32's sectors per FAT
    with raw.open("r+b") as f:
        for n in range(fats):
            f.seek((reserved + n * fat_size) * 512 + 3 * 4)  # cluster 3: after the root's 2
            f.write(b"\0\0\0\0")


def test_a_clean_fat_is_clean(tmp_path: Path) -> None:
    fat = boottest.fat_check(esp(tmp_path))
    assert (fat.clean, fat.dirty) == (True, False)


def test_the_mounted_flag_fails_the_check_after_a_clean_shutdown(tmp_path: Path) -> None:
    raw = esp(tmp_path)
    mark_mounted(raw)
    fat = boottest.fat_check(raw)
    assert not fat.clean and "Dirty bit is set" in fat.report


@pytest.mark.parametrize("bits", [32, 16])
def test_the_mounted_flag_after_a_power_cut_is_reported_not_failed(
    tmp_path: Path, bits: int
) -> None:
    raw = esp(tmp_path, bits)
    mark_mounted(raw, bits)
    fat = boottest.fat_check(raw, power_cut=True)
    assert (fat.clean, fat.dirty) == (True, True), fat.report


def test_damage_after_a_power_cut_fails_the_check_with_the_flag_cleared(tmp_path: Path) -> None:
    raw = esp(tmp_path)
    mark_mounted(raw)
    break_the_file(raw)
    fat = boottest.fat_check(raw, power_cut=True)
    assert fat.dirty and not fat.clean and "Contains a free cluster" in fat.report, fat.report


def test_damage_is_found_without_the_flag(tmp_path: Path) -> None:
    raw = esp(tmp_path)
    break_the_file(raw)
    assert not boottest.fat_check(raw, power_cut=True).clean
