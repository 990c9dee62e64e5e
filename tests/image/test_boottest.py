"""Parts of the boot test's harness (image/boottest.py) with rules of their own.

- The ESP check (`fat_check`), on real FAT images made with mkfs.vfat and mcopy and checked
  with the real fsck.fat: after a power cut the "mounted" flag Linux leaves in the boot sector
  is expected and reported, never counted as clean after a clean shutdown, and never hides
  damage.
- The emulated reboot watchdog (`Machine.stuck_in_firmware`), on a real QEMU with OVMF booting
  an EFI application that hangs: a console silent after the firmware's boot line is reset once,
  recorded with its evidence, and a second such hang fails.
- Emergency mode (`Machine.count_emergency_reboots`): the image's emergency mode reboots, which
  the harness counts and lets go on; systemd's own emergency shell still fails at once. On a
  built image (slow): a version whose root never appears spends its tries through those
  reboots and systemd-boot falls back to the previous version by itself.
- The deadline (`--finish-by`): the OS updates run only where version 1's boots say they end
  before it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOTTEST = REPO / "image" / "boottest.py"

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


V1_BOOTS = {"first_boot_to_online_s": 100.0, "reboot_to_online_s": 80.0}


def test_updates_that_end_before_the_deadline_run() -> None:
    need = boottest.UPDATES_PER_V1_BOOTS * 180
    assert boottest.updates_past_deadline(V1_BOOTS, time.time() + need + 60) is None


def test_updates_that_would_end_past_the_deadline_are_skipped_with_the_reason() -> None:
    need = boottest.UPDATES_PER_V1_BOOTS * 180
    why = boottest.updates_past_deadline(V1_BOOTS, time.time() + need - 60)
    assert why is not None and why.startswith("OS updates not run: about 33 min here")
    assert "two boots, 180 s), 32 min left before --finish-by" in why
    late = boottest.updates_past_deadline(V1_BOOTS, time.time() - 600)
    assert late is not None and ", 0 min left" in late


BDS = "\x1b[0mBdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0)\r\n"


def test_a_console_silent_after_the_firmware_boot_line_is_a_stall() -> None:
    line = boottest.firmware_stall("BdsDxe: loading Boot0001\r\n" + BDS, 601)
    assert line is not None and line.startswith("BdsDxe: starting Boot0001")


def test_a_console_silent_for_less_than_the_reboot_watchdog_is_no_stall() -> None:
    assert boottest.firmware_stall(BDS, boottest.FIRMWARE_STALL_S - 1) is None


def test_a_silent_kernel_is_no_firmware_stall() -> None:
    assert boottest.firmware_stall(BDS + "[    0.000000] Linux version 6.1\n", 3600) is None


#: The end of session 13's console: a reboot into a staged version whose reset never reached
#: the firmware's boot-option line (19 min silent, the vCPU busy in the firmware).
REBOOTED = ("[   98.723695] banner[424]: spoke: device=dev-ff36 provisioning=enrolled\r\n"
            "[  388.520517] watchdog: watchdog0: watchdog did not stop!\r\n"
            "[  388.831385] reboot: Restarting system\r\n")


def test_a_console_silent_after_the_kernel_restarts_the_machine_is_a_stall() -> None:
    line = boottest.firmware_stall(BDS + REBOOTED, boottest.RESTART_STALL_S)
    assert line == "[  388.831385] reboot: Restarting system"
    assert boottest.firmware_stall(BDS + REBOOTED, boottest.RESTART_STALL_S - 1) is None


def test_the_firmware_gets_longer_than_a_reset_before_its_stall_counts() -> None:
    # After a reset OVMF prints within seconds; after its boot-option line the kernel may take
    # minutes on a loaded host.
    assert boottest.RESTART_STALL_S < boottest.FIRMWARE_STALL_S
    assert boottest.firmware_stall(BDS, boottest.RESTART_STALL_S) is None


def test_a_kernel_after_the_reboot_is_seen_on_the_same_console() -> None:
    booted = BDS + REBOOTED + BDS + "[    1.204000] Linux version 6.1\r\n"
    assert boottest.kernel_after_reboot(booted, restarted=False)
    assert not boottest.kernel_after_reboot(BDS + REBOOTED + BDS, restarted=False)


def test_a_kernel_after_the_emulated_watchdog_restart_counts_as_after_the_reboot() -> None:
    # The reboot hung; the harness started a new QEMU with a new serial log: no reboot line
    # there, and its first kernel is the one the reboot was for.
    fresh = BDS + "\x1b[0m[   17.654744] platform regulatory.0: firmware: failed to load\r\n"
    assert boottest.kernel_after_reboot(fresh, restarted=True)
    assert not boottest.kernel_after_reboot(fresh, restarted=False)
    assert not boottest.kernel_after_reboot(BDS, restarted=True)


def test_a_kernel_silent_before_its_reboot_line_is_no_firmware_stall() -> None:
    assert boottest.firmware_stall(BDS + REBOOTED.rsplit("[  388.83", 1)[0], 3600) is None


#: The end of version 3's crashed first boot (Debian's panic timeout is 0: no "Rebooting in").
PANICKED = ("[   61.402117] sysrq: Trigger a crash\r\n"
            "[   61.402530] Kernel panic - not syncing: sysrq triggered crash\r\n"
            "[   61.410962] Kernel Offset: disabled\r\n"
            "[   61.411402] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n")


def test_a_console_silent_after_a_kernel_panic_longer_than_the_watchdog_takes_is_a_stall() -> None:
    line = boottest.firmware_stall(BDS + PANICKED, boottest.PANIC_STALL_S)
    assert line is not None and line.endswith("sysrq triggered crash ]---")
    # the chipset's watchdog resets a crashed kernel within two 1-min periods
    assert boottest.firmware_stall(BDS + PANICKED, boottest.PANIC_STALL_S - 1) is None
    assert boottest.PANIC_STALL_S > 2 * 60 + 12


def test_the_vcpu_is_in_the_firmware_below_4_gib_and_in_the_kernel_above() -> None:
    firmware = "CPU#0\nRAX=000000007fe9dd18\nRIP=000000007fe91a6d RFL=00000206 [-----P-] CPL=0"
    kernel = "CPU#0\nRIP=ffffffff81c3b5d4 RFL=00000246 [---Z-P-] CPL=0"
    assert boottest.in_firmware(firmware)
    assert not boottest.in_firmware(kernel)
    assert not boottest.in_firmware("")  # QEMU did not answer: nothing to judge by
    assert boottest.instruction_pointer(kernel) == 0xffffffff81c3b5d4
    assert boottest.instruction_pointer("") is None


def test_a_crashed_kernel_that_no_reset_took_away_is_left_to_the_boot_test(
        tmp_path: Path) -> None:
    """No QEMU answers, so nothing shows the vCPU left the kernel: the harness does not reset
    the box for the watchdog it is testing, and keeps no evidence."""
    machine = console_machine(tmp_path, BDS + PANICKED)
    os.utime(machine.serial, (0, 0))
    assert machine.dead() is None
    assert machine.watchdog_resets == [] and not list(tmp_path.glob("stuck-*"))
    assert boottest.reset_after_crash(machine) is None


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


def hanging_machine(tmp_path: Path) -> Any:
    """A Machine, not yet started, on the hanging disk (its hub never runs)."""
    hub = boottest.Hub(tmp_path / "hub", Path(sys.executable).parent.parent, tmp_path / "hub.log")
    hub.mqtt_port, hub.http_port = boottest.free_port(), boottest.free_port()
    stick = tmp_path / "stick.img"
    stick.write_bytes(bytes(2**20))
    machine = boottest.Machine(hanging_disk(tmp_path), tmp_path, stick, hub, "tcg")
    machine.create()
    return machine


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and boottest.OVMF_CODE.exists()),
                    reason="needs QEMU and OVMF")
def test_a_firmware_hang_is_reset_once_recorded_and_fails_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boottest, "FIRMWARE_STALL_S", 5)
    machine = hanging_machine(tmp_path)
    machine.start("hang")
    first_qemu = machine.proc
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
        # the reset was a new QEMU on the same disk: the firmware booted again, in the next log
        assert first_qemu is not None and first_qemu.poll() is not None
        assert reset["serial"] == "serial-1-hang.log"
        assert machine.serial is not None and machine.serial.name == "serial-2-hang-watchdog.log"
        assert machine.restarted_by_watchdog
        assert machine.console().count("BdsDxe: starting Boot0001") == 1
    finally:
        machine.kill()


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and boottest.OVMF_CODE.exists()),
                    reason="needs QEMU and OVMF")
def test_a_panic_whose_reset_hung_in_the_firmware_is_reset_once_and_counts_as_the_reset(
    tmp_path: Path
) -> None:
    """A real QEMU whose vCPU is in the firmware (the hanging application) behind a console
    that ended with a kernel panic long ago: the watchdog reset the box, the firmware hung."""
    machine = hanging_machine(tmp_path)
    machine.start("crash")
    try:
        boottest.wait_for("the firmware's boot line", lambda: "BdsDxe: starting" in
                          machine.console(), 120, every=1)
        crashed = tmp_path / "serial-1-crash.log"
        crashed.write_text(BDS + PANICKED)  # the crashed boot's console, silent since
        os.utime(crashed, (0, 0))
        assert machine.dead() is None
        (reset,) = machine.watchdog_resets
        assert reset["line"].startswith("[   61.411402] ---[ end Kernel panic")
        assert boottest.in_firmware(
            (Path(reset["evidence"]) / "registers.txt").read_text())
        assert machine.restarted_by_watchdog
        after = boottest.reset_after_crash(machine)
        assert after is not None and after.startswith(boottest.CRASH)
        assert "Rebooting in" not in after
    finally:
        machine.kill()


def console_machine(tmp_path: Path, text: str) -> Any:
    """A Machine (never started) whose boot console says ``text``."""
    hub = boottest.Hub(tmp_path / "hub", Path(sys.executable).parent.parent, tmp_path / "hub.log")
    machine = boottest.Machine(tmp_path / "disk.raw", tmp_path, tmp_path / "stick", hub, "tcg")
    machine.serial = tmp_path / "serial-1-boot.log"
    machine.serial.write_text(text)
    return machine


TIMED_OUT = "[ TIME ] Timed out waiting for device /dev/disk/by-partlabel/spoke_2.\r\n"
REBOOT = ("spoke: boot failed in the initrd (emergency mode, failed units: none); rebooting in "
          "10 s, boot counting falls back to the previous slot after its tries\r\n")


def test_an_emergency_reboot_is_counted_once_and_the_boot_goes_on(tmp_path: Path) -> None:
    """The image's emergency mode reboots (its drop-ins): the boot test counts it, once."""
    machine = console_machine(tmp_path, BDS + TIMED_OUT + REBOOT + BDS)
    assert machine.dead() is None and machine.dead() is None
    (reboot,) = machine.emergency_reboots
    assert (reboot["where"], reboot["why"], reboot["serial"]) == (
        "the initrd", "emergency mode, failed units: none", "serial-1-boot.log")
    with machine.serial.open("a") as console:  # the next try fails the same way
        console.write(TIMED_OUT + REBOOT)
    assert machine.dead() is None and len(machine.emergency_reboots) == 2


@pytest.mark.parametrize("mode", ["emergency", "rescue"])
def test_a_boot_in_systemds_emergency_or_rescue_shell_fails_at_once(tmp_path: Path,
                                                                   mode: str) -> None:
    """An image without the reboot drop-ins: its shell would wait forever."""
    machine = console_machine(tmp_path, BDS + TIMED_OUT
        + f"You are in {mode} mode. After logging in, type \"journalctl -xb\" to view\r\n"
        "Give root password for maintenance\r\n")
    why = machine.dead()
    assert why is not None and why.startswith(f"the boot dropped to the {mode} shell")
    assert "by-partlabel/spoke_2" in why and not machine.emergency_reboots


#: A built image (what `make image-test` or image/build.sh leaves), for the boots of a real one.
IMAGE_OUT = Path(os.environ.get("SPOKE_IMAGE_OUT", REPO / "image" / "build" / "boottest" / "out"))
DERIVE = REPO / "image" / "derive.py"
needs_a_built_image = pytest.mark.skipif(
    not ((IMAGE_OUT / "spoke-cpu.raw").exists()
         and shutil.which("qemu-system-x86_64") and boottest.OVMF_CODE.exists()),
    reason="needs a built image in SPOKE_IMAGE_OUT (image/build.sh's output directory; "
           "default: what make image-test leaves), QEMU and OVMF")
#: A TCG boot of the built image takes 1.5 to 5 min, longer beside other tests: more than
#: pytest's default 300 s (pyproject.toml) for the tests that boot it.
boots_the_image = pytest.mark.timeout(1800)


def image_machine(tmp_path: Path, disk: Path) -> Any:
    """A created (not started) Machine on ``disk``, with an empty stick and a hub nobody runs."""
    hub = boottest.Hub(tmp_path / "hub", Path(sys.executable).parent.parent, tmp_path / "hub.log")
    hub.mqtt_port, hub.http_port = boottest.free_port(), boottest.free_port()
    stick = tmp_path / "stick.img"
    stick.write_bytes(bytes(2**20))
    machine = boottest.Machine(disk, tmp_path, stick, hub, "tcg")
    machine.create()
    return machine


@pytest.mark.slow
@needs_a_built_image
@boots_the_image
def test_a_version_whose_root_never_appears_falls_back_by_itself(tmp_path: Path) -> None:
    """Version 2's UKI staged on version 1's ESP as systemd-sysupdate stages it, with 2 tries,
    but its root slot never written: its initrd waits for root=PARTLABEL=spoke_2 (20 s here,
    not the image's 300), enters emergency mode, which reboots (the image's drop-ins); each
    boot spends a try, and then systemd-boot boots version 1 by itself."""
    v2 = tmp_path / "v2"
    subprocess.run([sys.executable, str(DERIVE), "--from", str(IMAGE_OUT), "--version", "2",
                    "--kernel-arg", "systemd.default_device_timeout_sec=20",
                    "--output-dir", str(v2)], check=True, capture_output=True)
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(IMAGE_OUT / "spoke-cpu.raw"), str(disk)],
                   check=True)
    offset = boottest.partition(disk, "esp")[0]
    subprocess.run(["mcopy", "-i", f"{disk}@@{offset}", str(v2 / "spoke-cpu_2.os/spoke_2.efi"),
                    "::/EFI/Linux/spoke_2+2-0.efi"], check=True)
    machine = image_machine(tmp_path, disk)
    machine.start("root-never-appears")
    t0 = time.monotonic()
    try:
        # version 1's first userspace line (its bundle import, which finds no bundle)
        boottest.wait_for("version 1 booted", lambda: "spoke-import:" in machine.console(),
                          2400, every=2, alive=machine.dead)
        took = time.monotonic() - t0
    finally:
        machine.kill()
    console = machine.console()
    assert [(r["where"], r["boot"]) for r in machine.emergency_reboots] == [
        ("the initrd", 1), ("the initrd", 1)], machine.emergency_reboots
    assert console.count("Timed out waiting for device") >= 2
    assert console.rindex("spoke: boot failed in the initrd") < console.index("spoke-import:")
    esp = tmp_path / "esp.raw"
    boottest.copy_partition(machine, "esp", esp)
    entries = subprocess.run(["mdir", "-b", "-i", str(esp), "::/EFI/Linux"], check=True,
                             capture_output=True, text=True).stdout.split()
    # both tries spent; version 1's entry blessed as it was
    assert sorted(Path(e).name for e in entries) == ["spoke_1.efi", "spoke_2+0-2.efi"], entries
    print(f"root never appears: 2 emergency reboots, version 1 booted after {took:.0f} s")


@pytest.mark.slow
@needs_a_built_image
@boots_the_image
@pytest.mark.parametrize("mode", ["emergency", "rescue"])
def test_emergency_and_rescue_mode_in_the_root_file_system_reboot(tmp_path: Path,
                                                                   mode: str) -> None:
    """The built image's kernel booted straight into emergency or rescue mode (systemd.unit=,
    which the root file system's systemd reads): it says so on the console and reboots."""
    machine = image_machine(tmp_path, IMAGE_OUT / "spoke-cpu.raw")
    machine.start(mode, extra_cmdline=f"systemd.unit={mode}.target")
    line = f"spoke: boot failed in the root file system ({mode} mode"

    def rebooted() -> bool:
        console = machine.console()
        return line in console and "reboot: Restarting system" in console[console.index(line):]

    try:
        boottest.wait_for(f"the {mode} reboot", rebooted, 900, every=2, alive=machine.dead)
    finally:
        machine.kill()
    assert [r["where"] for r in machine.emergency_reboots] == ["the root file system"]
