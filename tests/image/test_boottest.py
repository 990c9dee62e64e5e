"""Two parts of the boot test's harness (image/boottest.py) with rules of their own.

- The ESP check (`fat_check`), on real FAT images made with mkfs.vfat and mcopy and checked
  with the real fsck.fat: after a power cut the "mounted" flag Linux leaves in the boot sector
  is expected and reported, never counted as clean after a clean shutdown, and never hides
  damage.
- The emulated reboot watchdog (`Machine.stuck_in_firmware`), on a real QEMU with OVMF booting
  an EFI application that hangs: a console silent after the firmware's boot line is reset once,
  recorded with its evidence, and a second such hang fails.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BOOTTEST = Path(__file__).resolve().parents[2] / "image" / "boottest.py"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.vfat", "mcopy", "mmd", "fsck.fat", "sfdisk")),
    reason="needs dosfstools, mtools and sfdisk",
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


BDS = "\x1b[0mBdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0)\r\n"


def test_a_console_silent_after_the_firmware_boot_line_is_a_stall() -> None:
    line = boottest.firmware_stall("BdsDxe: loading Boot0001\r\n" + BDS, 601)
    assert line is not None and line.startswith("BdsDxe: starting Boot0001")


def test_a_console_silent_for_less_than_the_reboot_watchdog_is_no_stall() -> None:
    assert boottest.firmware_stall(BDS, boottest.FIRMWARE_STALL_S - 1) is None


def test_a_silent_kernel_is_no_firmware_stall() -> None:
    assert boottest.firmware_stall(BDS + "[    0.000000] Linux version 6.1\n", 3600) is None


def hang_efi() -> bytes:
    """A PE32+ EFI application whose code is one jump to itself: it hangs, printing nothing,
    right after the firmware's "BdsDxe: starting" line."""
    dos = b"MZ" + bytes(58) + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)
    std = struct.pack("<HBBIIIII", 0x20B, 0, 0, 0x200, 0, 0, 0x1000, 0x1000)
    win = struct.pack("<QIIHHHHHHIIIIHHQQQQII", 0x10000000, 0x1000, 0x200, 0, 0, 0, 0, 0, 0,
                      0, 0x2000, 0x200, 0, 10, 0, 0x10000, 0x1000, 0x10000, 0x1000, 0, 16)
    text = b".text\0\0\0" + struct.pack("<IIIIIIHHI", 0x10, 0x1000, 0x200, 0x200, 0, 0, 0, 0,
                                         0x60000020)
    head = (dos + b"PE\0\0" + coff + std + win + bytes(128) + text).ljust(0x200, b"\0")
    return head + b"\xeb\xfe".ljust(0x200, b"\0")


def hanging_disk(tmp_path: Path) -> Path:
    """A GPT disk whose ESP (labelled "esp", as the image's) boots the hanging application."""
    disk = tmp_path / "hang.raw"
    with disk.open("wb") as f:
        f.truncate(40 * 2**20)
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True, input=(
        "label: gpt\nstart=2048, size=69632, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
        "name=esp\n"))
    subprocess.run(["mkfs.vfat", "--offset", "2048", str(disk), "34816"], check=True,
                   capture_output=True)
    app = tmp_path / "BOOTX64.EFI"
    app.write_bytes(hang_efi())
    esp = f"{disk}@@1M"
    subprocess.run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", esp, str(app), "::/EFI/BOOT/BOOTX64.EFI"], check=True)
    return disk


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and boottest.OVMF_CODE.exists()),
                    reason="needs QEMU and OVMF")
def test_a_firmware_hang_is_reset_once_recorded_and_fails_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boottest, "FIRMWARE_STALL_S", 5)
    hub = boottest.Hub(tmp_path / "hub", Path(sys.executable).parent.parent, tmp_path / "hub.log")
    hub.mqtt_port, hub.http_port = boottest.free_port(), boottest.free_port()
    stick = tmp_path / "stick.img"
    stick.write_bytes(bytes(2**20))
    machine = boottest.Machine(hanging_disk(tmp_path), tmp_path, stick, hub, "tcg")
    machine.create()
    machine.start("hang")
    try:
        deadline = time.monotonic() + 240
        while not machine.watchdog_resets:
            assert machine.dead() is None
            assert time.monotonic() < deadline, machine.console()[-500:]
            time.sleep(1)
        (reset,) = machine.watchdog_resets
        evidence = Path(reset["evidence"])
        assert reset["line"].startswith("BdsDxe: starting Boot0001")
        assert (evidence / "registers.txt").read_text().strip()
        assert (evidence / "OVMF_VARS.fd").stat().st_size == boottest.OVMF_VARS.stat().st_size
        second = boottest.wait_for("the second hang", machine.dead, 240, every=1)
        assert second.startswith("stuck in the firmware") and len(machine.watchdog_resets) == 1
        # the reset booted the firmware again: its boot line came a second time
        assert machine.console().count("BdsDxe: starting Boot0001") == 2
    finally:
        machine.kill()


def test_a_boot_in_the_emergency_shell_fails_at_once(tmp_path: Path) -> None:
    """The console of a boot whose initrd gave up on the root device (the boot test's v2, once)."""
    hub = boottest.Hub(tmp_path / "hub", Path(sys.executable).parent.parent, tmp_path / "hub.log")
    machine = boottest.Machine(tmp_path / "disk.raw", tmp_path, tmp_path / "stick", hub, "tcg")
    machine.serial = tmp_path / "serial.log"
    machine.serial.write_text(
        BDS + "[ TIME ] Timed out waiting for device /dev/disk/by-partlabel/spoke_2.\r\n"
        "You are in emergency mode. After logging in, type \"journalctl -xb\" to view\r\n"
        "Give root password for maintenance\r\n")
    why = machine.dead()
    assert why is not None and why.startswith("the boot dropped to the emergency shell")
    assert "by-partlabel/spoke_2" in why
