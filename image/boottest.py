#!/usr/bin/env python3
"""Boot test of the appliance image in QEMU, asserted from the hub's side (`make image-test`).

1. creates a hub home on loopback and builds the `cpu` image trusting its provisioning key;
2. writes a signed bundle onto a small FAT disk image labelled SPOKE (a USB stick);
3. boots the image in QEMU (KVM only if a short probe boot under it reaches userspace, else
   TCG), user-mode networking with restrict=on and guest forwarding only to the hub's loopback
   MQTT and HTTP ports;
4. asserts at the hub that the appliance enrolled, is online and reported its state, with its
   device key sealed by the VM's TPM (a software TPM, swtpm, where the host has one);
5. powers it off and on, and asserts it comes back online without enrolling again (the same
   TPM unseals the same key);
6. updates the OS over the air (--versions, default 3): publishes version 2 (derived from
   version 1's build by image/derive.py: another version stamp) with `spoke-hub os publish`;
   the appliance downloads it through TUF, stages it into its empty root slot with
   systemd-sysupdate, reboots, passes its health gate (a tiny model serves) and reports 2
   committed; then version 3 (derived the same way, with a planted fault in its health check),
   whose every boot fails the gate until systemd-boot falls back to 2, which reports the
   rollback with its reason; identity, model and bundle on the data partition are compared
   byte for byte (--versions 1 boots version 1 only);
7. boots it once with spoke.factory_reset=1 and asserts that it provisions itself again.

Each boot's serial console goes to a log file; on failure the logs are printed. Timings go to
the results file (and docs/BENCHMARKS.md by hand). The last line is "N passed, N failed", and
says so when a boot that hung in the firmware was reset by the harness (WATCHDOG_RESETS) and
when a boot failed and rebooted itself from emergency mode (EMERGENCY_REBOOT).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUEST_HUB_IP = "10.0.2.100"  # inside slirp's 10.0.2.0/24; forwarded to the host's loopback
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
LABELS = "site=qemu-boot-test,region=ci"
#: A console silent this long right after the firmware's boot-option line is a hung boot: the
#: image's RebootWatchdogSec (10 min), the watchdog systemd arms for every reboot.
FIRMWARE_STALL_S = 600
#: A console silent this long after the kernel's "reboot: Restarting system" is this QEMU's own
#: hang, not a slow machine: after a reset OVMF prints within 3 s under TCG (5 warm resets and
#: a cold start measured, session 14), and three of about thirteen whole sequences hung there
#: instead, each cured by a new QEMU process (docs/IMAGE.md). Waiting the reboot watchdog's
#: 10 min for what a real chipset never shows cost those runs 10 min each.
RESTART_STALL_S = 120
#: The kernel's last line of a panic (Debian's panic timeout is 0: it never reboots itself), after
#: which only the chipset's watchdog resets the box, within two of its 1-min periods (128 to 132
#: s measured from version 3's crash under TCG). A console silent this long after it, with the
#: vCPU in the firmware, is a reset that hung there, as after a reboot (session 16's CI: 10 min).
PANIC_END = "---[ end Kernel panic"
PANIC_STALL_S = 300
#: What the image prints when a boot gives up (e.g. the root device never came) and enters
#: emergency or rescue mode: its drop-ins (image/mkosi/initrd/) reboot after 10 s, which spends
#: a boot try. Counted (results.json, the last line); the boot goes on.
EMERGENCY_REBOOT = re.compile(r"spoke: boot failed in (the initrd|the root file system) "
                              r"\(([^)\n]*)\); rebooting")
#: What systemd's own emergency or rescue shell prints: an image without those drop-ins, which
#: would wait there forever.
EMERGENCY_SHELL = re.compile(r"You are in (emergency|rescue) mode")
#: How many such hangs per run the harness resets as that watchdog would (then counted in
#: results.json and the last line); one more fails the run. Why the harness does it: QEMU 7.2
#: sets the ICH9 "No Reboot" bit (GCS) on every reset, whatever the pin strap says (the
#: datasheet sets it only when the strap is sampled high; QEMU fixed it in September 2025),
#: while the TCO timer that systemd armed keeps counting through the reset (pm_reset leaves
#: it): so in this QEMU the armed watchdog can never reset a boot that hangs in the firmware,
#: where on the chipset it emulates it would. The harness's reset is a new QEMU process on the
#: same disk, UEFI variables and TPM state (its boot goes on in the next serial log).
WATCHDOG_RESETS = 1
#: The end of the boot name (and serial log) of such a restart.
WATCHDOG_RESTART = "-watchdog"
#: What the OS updates after version 1's first two boots (to 2, the rollback from 3, the factory
#: reset) take, in units of those two boots: 10.6 and 9.4 in sessions 10 and 11
#: (docs/BENCHMARKS.md), rounded up. The same TCG guest moves and writes the images, so its own
#: boots are the yardstick of this machine's speed; --finish-by uses it.
UPDATES_PER_V1_BOOTS = 11
ANSI = r"\x1b\[[0-9;=?]*[A-Za-z]"  # the firmware's and boot loader's terminal escapes


def log(msg: str) -> None:
    print(f"[image-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 3.0,
             alive: Callable[[], str | None] | None = None) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if alive is not None and (why := alive()):
            raise TestFailure(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise TestFailure(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)


class TestFailure(Exception):
    pass


class Hub:
    """A real spoke-hub (with its managed mosquitto) on the host's loopback."""

    def __init__(self, home: Path, venv: Path, logfile: Path) -> None:
        self.home = home
        self.bin = venv / "bin" / "spoke-hub"
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.mqtt_port = 0
        self.http_port = 0

    def init(self) -> None:
        self.mqtt_port, self.http_port = free_port(), free_port()
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(self.bin), "init", "--home", str(self.home), "--public-host", GUEST_HUB_IP,
             "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port)],
            check=True, stdout=subprocess.DEVNULL,
        )
        # Appliances reach the hub only through QEMU's forwarding to loopback: bind there only.
        config = self.home / "hub.toml"
        text = config.read_text()
        config.write_text(text.replace("[hub]\n", '[hub]\nbind_host = "127.0.0.1"\n', 1))

    def load_ports(self) -> None:
        text = (self.home / "hub.toml").read_text()
        self.mqtt_port = int(re.search(r"mqtt_port\s*=\s*(\d+)", text).group(1))  # type: ignore[union-attr]
        self.http_port = int(re.search(r"http_port\s*=\s*(\d+)", text).group(1))  # type: ignore[union-attr]

    def bundle(self, out: Path) -> None:
        subprocess.run(
            [str(self.bin), "bundle", "create", "--home", str(self.home), "--labels", LABELS,
             "--expires", "1d", "--max-uses", "5", "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )

    def serve(self) -> None:
        out = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bin), "serve", "--home", str(self.home)], stdout=out, stderr=out,
            start_new_session=True,
        )
        wait_for("the hub's MQTT port", self._listening, 60, every=0.5, alive=self._dead)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=1):
                return True
        except OSError:
            return False

    def _dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"spoke-hub serve exited with {self.proc.returncode}"
        return None

    def devices(self) -> list[dict[str, Any]]:
        for attempt in range(3):
            done = subprocess.run(
                [str(self.bin), "devices", "--home", str(self.home), "--json"],
                capture_output=True, text=True,
            )
            if done.returncode == 0:
                return list(json.loads(done.stdout))
            log(f"spoke-hub devices failed ({done.returncode}, try {attempt + 1}): "
                f"{done.stderr.strip()[-500:]}")
            time.sleep(2)
        raise TestFailure("spoke-hub devices --json keeps failing")

    def cli(self, *args: str) -> str:
        return subprocess.run([str(self.bin), *args, "--home", str(self.home)], check=True,
                              capture_output=True, text=True).stdout

    def apply_policy(self, text: str) -> None:
        path = self.home / "policy-input.toml"
        path.write_text(text)
        self.cli("policy", "apply", str(path))

    def device(self, device_id: str) -> dict[str, Any]:
        return next((d for d in self.devices() if d["id"] == device_id), {})

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Machine:
    """One QEMU appliance: a qcow2 overlay on the built image, its UEFI variables, a USB stick."""

    def __init__(self, image: Path, work: Path, stick: Path, hub: Hub, accel: str) -> None:
        self.image = image
        self.work = work
        self.stick = stick
        self.hub = hub
        self.accel = accel
        self.disk = work / "disk.qcow2"
        self.vars = work / "OVMF_VARS.fd"
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial: Path | None = None
        self.boots = 0
        # The firmware stalls the harness's emulated reboot watchdog reset (stuck_in_firmware).
        self.watchdog_resets: list[dict[str, Any]] = []
        # The boots that failed and rebooted themselves from emergency or rescue mode.
        self.emergency_reboots: list[dict[str, Any]] = []
        # The machine's TPM: its state (seeds) lives as long as the machine, across boots.
        self.tpm_state = work / "tpm"
        self.tpm: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        self.disk.unlink(missing_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image), "-F", "raw",
             str(self.disk)], check=True,
        )
        shutil.copyfile(OVMF_VARS, self.vars)
        shutil.rmtree(self.tpm_state, ignore_errors=True)

    @property
    def has_tpm(self) -> bool:
        return shutil.which("swtpm") is not None

    def start_tpm(self) -> list[str]:
        """A software TPM 2.0 for this boot (it exits with QEMU); QEMU's arguments for it."""
        if self.tpm is not None and self.tpm.poll() is None:  # the last boot's, exiting with QEMU
            try:
                self.tpm.wait(10)
            except subprocess.TimeoutExpired:
                self.tpm.kill()
                self.tpm.wait()
        sock = self.work / "swtpm.sock"
        sock.unlink(missing_ok=True)
        self.tpm_state.mkdir(parents=True, exist_ok=True)
        out = (self.work / "swtpm.log").open("ab")
        self.tpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_state}",
             "--ctrl", f"type=unixio,path={sock}", "--terminate"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )
        wait_for("swtpm's socket", sock.exists, 20, every=0.1)
        return ["-chardev", f"socket,id=chrtpm,path={sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]

    def netdev(self) -> str:
        # restrict=on: no route out of the guest at all, except these two explicit forwards, each
        # to the hub's port on the host's loopback (socat runs per guest connection).
        fwd = ",".join(
            f"guestfwd=tcp:{GUEST_HUB_IP}:{port}-cmd:socat STDIO TCP:127.0.0.1:{port}"
            for port in (self.hub.mqtt_port, self.hub.http_port)
        )
        return f"user,id=n0,restrict=on,{fwd}"

    def start(self, name: str, extra_cmdline: str | None = None,
              direct: Path | None = None) -> None:
        """Boot through OVMF, systemd-boot and the UKI; or, given extra kernel command-line
        arguments, boot the same kernel and initrd directly with them added (what a technician
        does by editing the boot entry once)."""
        self.count_emergency_reboots()  # the last boot's console, before the next one's
        self.boots += 1
        self.serial = self.work / f"serial-{self.boots}-{name}.log"
        self.serial.unlink(missing_ok=True)
        cmd = [
            "qemu-system-x86_64", "-machine", "q35", "-smp", "2", "-m", "2048",
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.work / 'qmp.sock'},server=on,wait=off",
            "-drive", f"if=none,id=disk,format=qcow2,file={self.disk}",
            "-device", "virtio-blk-pci,drive=disk,bootindex=1",
            "-device", "qemu-xhci,id=xhci",
            "-drive", f"if=none,id=stick,format=raw,readonly=on,file={self.stick}",
            "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on",
            "-netdev", self.netdev(), "-device", "virtio-net-pci,netdev=n0",
            "-rtc", "base=utc",
            # The q35 chipset's TCO watchdog (the guest's /dev/watchdog0), wired to reset the
            # machine like a real one: QEMU's default "noreboot" pin strap makes it a watchdog
            # that never fires. Its default action is a reset (-action watchdog=reset).
            "-global", "ICH9-LPC.noreboot=false",
        ]
        cmd += accel_args(self.accel)
        if self.has_tpm:
            cmd += self.start_tpm()
        if extra_cmdline is None:
            cmd += [
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={self.vars}",
            ]
        else:
            base = (direct or self.image).with_suffix("")
            cmdline = uki_cmdline(base.with_suffix(".efi"))
            cmd += [
                "-kernel", str(base.with_suffix(".vmlinuz")),
                "-initrd", str(base.with_suffix(".initrd")),
                "-append", f"{cmdline} {extra_cmdline}",
            ]
        log(f"boot {self.boots} ({name}, {self.accel})")
        out = (self.work / "qemu.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"QEMU exited with {self.proc.returncode}"
        self.count_emergency_reboots()
        if shell := EMERGENCY_SHELL.search(console := self.console()):
            # Nothing ends it: the shell waits for a root password that nobody types.
            tail = re.sub(ANSI, "", console).strip().splitlines()[-12:]
            return f"the boot dropped to the {shell.group(1)} shell: " + " | ".join(tail)
        return self.stuck_in_firmware()

    def count_emergency_reboots(self) -> None:
        """Records (once each) and logs the console's emergency reboots: the boot goes on."""
        if self.serial is None:
            return
        seen = {r["at"] for r in self.emergency_reboots if r["serial"] == self.serial.name}
        for found in EMERGENCY_REBOOT.finditer(self.console()):
            if found.start() in seen:
                continue
            self.emergency_reboots.append({"boot": self.boots, "serial": self.serial.name,
                                           "at": found.start(), "where": found.group(1),
                                           "why": found.group(2)})
            log(f"EMERGENCY REBOOT: boot {self.boots} failed in {found.group(1)} "
                f"({found.group(2)}) and reboots itself; the boot goes on")

    def stuck_in_firmware(self) -> str | None:
        """A boot whose console stopped at the firmware's "BdsDxe: loading/starting" line for
        FIRMWARE_STALL_S (the kernel's first line comes within about 90 s of it, 4-5 min on a
        loaded host; OVMF prints a CPU exception on the serial console, this is silence), or at
        the kernel's last line of a reboot, before the firmware printed anything, for
        RESTART_STALL_S.
        Keeps what there is to see (the registers, the variable store, the ESP's file system
        check), then does what the image's reboot watchdog would do on a chipset that keeps it
        armed through the reset (see WATCHDOG_RESETS): resets the machine, once per run, and
        records it. A second stall fails the run."""
        if self.serial is None or not self.serial.exists():
            return None
        silent = time.time() - self.serial.stat().st_mtime
        line = firmware_stall(self.console(), silent)
        if line is None:
            return None
        regs = self.registers()
        if PANIC_END in line and not in_firmware(regs):
            return None  # the watchdog never reset the crashed kernel: the boot test's to judge
        evidence = self.work / f"stuck-{self.boots}-{len(self.watchdog_resets) + 1}"
        evidence.mkdir(exist_ok=True)
        (evidence / "registers.txt").write_text(regs)
        log("registers: " + " ".join(regs.split()[:12]))
        shutil.copyfile(self.vars, evidence / "OVMF_VARS.fd")
        fat = esp_check(self, evidence, running=True)
        log(f"ESP while stuck: {'clean' if fat.clean else 'NOT clean'}: {fat.report[-600:]}")
        stall = (f"stuck in the firmware: the console has been silent for {silent:.0f} s after "
                 f"{line!r} (evidence in {evidence})")
        if len(self.watchdog_resets) >= WATCHDOG_RESETS:
            return stall
        self.watchdog_resets.append({"boot": self.boots, "serial": str(self.serial.name),
                                     "line": line, "silent_s": round(silent),
                                     "evidence": str(evidence)})
        log(f"WATCHDOG RESET (emulated): {stall}; the machine is reset as the reboot watchdog "
            f"would have reset it ({len(self.watchdog_resets)} of at most {WATCHDOG_RESETS})")
        # A board's watchdog resets every device; QEMU's system_reset did not cure session 13's
        # hang where a new QEMU on the same disk, variables and TPM state did (docs/IMAGE.md).
        name = self.serial.stem.split("-", 2)[-1]
        self.kill()
        self.start(f"{name}{WATCHDOG_RESTART}")
        return None

    def registers(self) -> str:
        """The vCPU's registers (QEMU's "info registers"), or "" if QEMU does not answer."""
        with contextlib.suppress(OSError, ValueError):
            return str(self.qmp("human-monitor-command", **{"command-line": "info registers"}))
        return ""

    @property
    def restarted_by_watchdog(self) -> bool:
        """Whether the running QEMU is the emulated watchdog's restart of a hung boot."""
        return self.serial is not None and self.serial.stem.endswith(WATCHDOG_RESTART)

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace") if self.serial else ""
        except FileNotFoundError:
            return ""

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command; its "return" (events QEMU sends in between are skipped)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.work / "qmp.sock"))
            f = s.makefile("rw")
            f.readline()  # greeting
            answer: dict[str, Any] = {}
            for c, args in (("qmp_capabilities", {}), (command, arguments)):
                f.write(json.dumps({"execute": c, "arguments": args}) + "\n")
                f.flush()
                while not ({"return", "error"} & (answer := json.loads(f.readline())).keys()):
                    pass
            return answer.get("return", answer.get("error"))

    def power_off(self, timeout: float = 240) -> float:
        """ACPI power button, as a person would press it; returns how long shutdown took."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.qmp("system_powerdown")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise TestFailure(f"no clean shutdown within {timeout:.0f} s") from exc
        return time.monotonic() - t0

    def allocated(self) -> int:
        """Bytes the VM's disk overlay holds: what the guest has written since it was made."""
        return self.disk.stat().st_blocks * 512

    def kill(self) -> None:
        for proc in (self.proc, self.tpm):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def firmware_lines() -> dict[str, float]:
    """The last line a boot can print before the firmware has the machine, and how long the
    console may stay silent after it: the firmware's own boot-option line, or the kernel's last
    line of a reboot or of a panic (the reset, then the firmware, which prints nothing on this
    console before its boot-option line: a reset that never gets that far is silent after it,
    as in session 13's CI run, 19 min, the vCPU busy in the firmware)."""
    return {"BdsDxe: ": FIRMWARE_STALL_S, "reboot: Restarting system": RESTART_STALL_S,
            PANIC_END: PANIC_STALL_S}


RIP = re.compile(r"RIP=([0-9a-f]{16})")


def instruction_pointer(registers: str) -> int | None:
    """The vCPU's RIP in QEMU's ``info registers`` (None: QEMU did not answer)."""
    found = RIP.search(registers)
    return None if found is None else int(found.group(1), 16)


def in_firmware(registers: str) -> bool:
    """Whether the vCPU runs below 4 GiB, where OVMF lives, not in the kernel's upper half: a
    crashed kernel that a reset took away."""
    rip = instruction_pointer(registers)
    return rip is not None and rip < 2**32


def firmware_stall(console: str, silent_s: float) -> str | None:
    """The firmware's boot-option line ("BdsDxe: loading/starting ...") if it is the last thing
    on ``console`` and the console has been silent ``FIRMWARE_STALL_S`` since, or the kernel's
    "reboot: Restarting system" silent ``RESTART_STALL_S``: either way the reboot watchdog that
    systemd armed is the only thing still running, and it would reset the machine. Or the
    kernel's panic line silent ``PANIC_STALL_S``: a stall only once the vCPU has left the kernel
    (the caller asks), the chipset's watchdog having reset it into a firmware that hung."""
    lines = re.sub(ANSI, "", console).strip().splitlines()
    if not lines:
        return None
    stalled = any(mark in lines[-1] and silent_s >= limit
                  for mark, limit in firmware_lines().items())
    return lines[-1].strip() if stalled else None


#: A kernel's line after the kernel's reboot line: the box came back up from a reboot.
REBOOTED_KERNEL = re.compile(rf"reboot: Restarting system.*?\n(?:{ANSI})*\[\s*\d+\.\d+\]", re.S)
KERNEL_LINE = re.compile(rf"^(?:{ANSI})*\[\s*\d+\.\d+\]", re.M)


def kernel_after_reboot(console: str, restarted: bool) -> bool:
    """Whether a kernel runs after the boot's reboot: a kernel line after the reboot line on
    the same console, or any kernel line on the console of a machine the emulated watchdog
    started again during that reboot (a new QEMU, a new serial log)."""
    return bool(REBOOTED_KERNEL.search(console) or (restarted and KERNEL_LINE.search(console)))


def accel_args(accel: str) -> list[str]:
    # TCG's default CPU model (qemu64) is x86-64-v1; numpy 2 needs x86-64-v2 (SSE4.2, POPCNT) and
    # the daemon dies with SIGILL there. qemu64 plus exactly those features (not "max", under
    # which this kernel's timer check fails and the boot crawls).
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16"]


def uki_cmdline(uki: Path) -> str:
    """The kernel command line baked into the UKI (its .cmdline section), via pefile."""
    code = (
        "import pefile,sys\n"
        "pe = pefile.PE(sys.argv[1], fast_load=True)\n"
        "s = [x for x in pe.sections if x.Name.rstrip(b'\\0') == b'.cmdline'][0]\n"
        "print(s.get_data().rstrip(b'\\0').decode().strip())\n"
    )
    return subprocess.run(
        ["/usr/bin/python3", "-c", code, str(uki)], check=True, capture_output=True, text=True,
    ).stdout.strip()


def probe_kvm(image: Path, work: Path) -> str:
    """KVM only if a short boot under it reaches our first userspace line; else TCG."""
    if os.environ.get("SPOKE_IMAGE_TEST_ACCEL") in ("kvm", "tcg"):
        return os.environ["SPOKE_IMAGE_TEST_ACCEL"]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("no usable /dev/kvm: TCG")
        return "tcg"
    probe = work / "kvm-probe"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir(parents=True)
    disk, vars_, serial = probe / "disk.qcow2", probe / "vars.fd", probe / "serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw",
                    str(disk)], check=True)
    shutil.copyfile(OVMF_VARS, vars_)
    cmd = [
        "qemu-system-x86_64", "-machine", "q35", *accel_args("kvm"), "-smp", "2", "-m", "2048",
        "-display", "none", "-monitor", "none", "-nodefaults", "-serial", f"file:{serial}",
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={vars_}",
        "-drive", f"if=virtio,format=qcow2,file={disk}", "-netdev", "user,id=n0,restrict=on",
        "-device", "virtio-net-pci,netdev=n0",
    ]
    t0 = time.monotonic()
    with (probe / "qemu.log").open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    verdict = "tcg"
    try:
        while time.monotonic() - t0 < 90:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if "spoke-import:" in text:
                verdict = "kvm"
                break
            errors = (probe / "qemu.log").read_text(errors="replace")
            if proc.poll() is not None or "KVM internal error" in errors:
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    lines = (probe / "qemu.log").read_text(errors="replace").strip().splitlines()
    why = "reached userspace" if verdict == "kvm" else "failed: " + next(
        (x for x in lines if "KVM" in x or "error" in x), "no userspace line")
    log(f"KVM probe {why} after {time.monotonic() - t0:.0f} s -> {verdict.upper()}")
    shutil.rmtree(probe, ignore_errors=True)
    return verdict


def site_tree(work: Path) -> Path:
    """What a site adds to every version it builds: a reboot window of the whole day, so the test
    need not wait for 02:00 (the appliance's default window) to boot a staged version; ONNX
    Runtime named (no backend measurement under TCG) and a model on probation for 10 s, not 120."""
    tree = work / "site-tree"
    dropin = tree / "etc/systemd/system/spoke.service.d/50-site.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nEnvironment=SPOKE_OS__REBOOT_WINDOW=00:00-23:59 "
                      "SPOKE_MODELS__BACKEND=onnxruntime SPOKE_MODELS__GATE_QUIET_S=10\n")
    return tree


#: Version 3's first boot crashes its kernel (the kernel then hangs: Debian's panic timeout is
#: 0), once: the marker on the data partition says it did.
CRASHED = "/var/lib/spoke/os/crashed-once"
CRASH = "sysrq: Trigger a crash"


def fault_tree(work: Path) -> Path:
    """Version 3's planted faults: its first boot crashes the kernel when the health check
    starts (a hung box, for the hardware watchdog); a wired network configuration with a static
    address in TEST-NET-1 instead of DHCP (the link is up at once, so the boot does not wait
    for the network, but there is no route to the hub), and a health check that allows no hub
    grace and waits only 10 s. Every boot of it fails."""
    tree = work / "fault-tree"
    dropin = tree / "etc/systemd/system/spoke-health.service.d/50-fault.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\nEnvironment=SPOKE_OS__HUB_GRACE_S=1\n"
        # "+": as root, outside the unit's sandbox, which would not let it write the trigger
        f"ExecStartPre=+/bin/sh -c 'test -e {CRASHED} || {{ touch {CRASHED}; sync; "
        "echo c > /proc/sysrq-trigger; }'\n"
        "ExecStart=\n"
        "ExecStart=/opt/spoke/bin/spoke health-gate --state-dir /var/lib/spoke --wait 10\n")
    network = tree / "etc/systemd/network/80-spoke-wired.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nType=ether\n\n[Network]\nAddress=192.0.2.10/24\n")
    return tree


def build(venv: Path, hub: Hub, out_dir: Path, version: str, *trees: Path) -> Path:
    """image/build.sh for one OS version; returns its update artefacts' directory."""
    cmd = ["bash", str(HERE / "build.sh"), "--profile", "cpu", "--hub-home", str(hub.home),
           "--output-dir", str(out_dir), "--version", version]
    for tree in trees:
        cmd += ["--extra-tree", str(tree)]
    subprocess.run(cmd, check=True, env={**os.environ, "VENV": str(venv)})
    return out_dir / f"spoke-cpu_{version}.os"


def derive(source: Path, versions: dict[str, tuple[Path, list[Path]]]) -> dict[str, float]:
    """image/derive.py for each version (its output directory and the trees it overlays), all
    at once: each is mostly one gzip on one core. Returns each version's wall seconds."""
    started = time.monotonic()
    jobs, seconds = {}, {}
    for version, (out_dir, trees) in versions.items():
        cmd = ["/usr/bin/python3", str(HERE / "derive.py"), "--from", str(source),
               "--version", version, "--output-dir", str(out_dir)]
        for tree in trees:
            cmd += ["--extra-tree", str(tree)]
        jobs[version] = subprocess.Popen(cmd)
    for version, job in jobs.items():
        if job.wait() != 0:
            raise subprocess.CalledProcessError(job.returncode, job.args)
        seconds[version] = round(time.monotonic() - started, 1)
    return seconds


MODEL_POLICY = """
[[rule]]
name = "boot-test"
selector = "site=qemu-boot-test"
model = "crack-vit"
version = "==1.0.0"
"""
#: What the data partition must keep byte for byte through updates and rollbacks.
KEPT = ("identity", "models/store", "bundle.spoke")


def tiny_model(venv: Path, out: Path) -> Path:
    """A tiny model artifact (the tests' config): the health gate wants a model serving."""
    code = ("import sys\n"
            "from models.artifact import write_artifact\n"
            "from models.config import tiny_config\n"
            "from models.vit import build_model\n"
            "write_artifact(build_model(tiny_config(), seed=0), sys.argv[1], name='crack-vit',"
            " version='1.0.0')\n")
    shutil.rmtree(out, ignore_errors=True)  # a --reuse-image run's from the last run
    subprocess.run([str(venv / "bin" / "python"), "-c", code, str(out)], check=True, cwd=REPO)
    return out


def partition(image: Path, label: str) -> tuple[int, int]:
    """(offset, size) in bytes of the partition labelled ``label``, from the image's GPT."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    part = next(p for p in table["partitions"] if p.get("name") == label)
    return int(part["start"]) * sector, int(part["size"]) * sector


def copy_partition(machine: Machine, label: str, raw: Path, running: bool = False) -> None:
    """The VM's partition ``label`` as a raw file: QEMU's raw driver with an offset and size
    over the qcow2 (``running``: while QEMU has the disk open, a snapshot of the moment)."""
    offset, size = partition(machine.image, label)
    raw.unlink(missing_ok=True)
    disk = {"driver": "qcow2", "file": {"driver": "file", "filename": str(machine.disk)}}
    window = {"driver": "raw", "offset": offset, "size": size, "file": disk}
    subprocess.run(["qemu-img", "convert", *(["-U"] if running else []), "-O", "raw",
                    f"json:{json.dumps(window)}", str(raw)], check=True)


def esp_check(machine: Machine, work: Path, running: bool = False,
              power_cut: bool = False) -> FatCheck:
    """fsck.fat -n (checks, changes nothing) of the VM's ESP, which the firmware, systemd-boot,
    systemd-sysupdate and systemd-bless-boot all write. ``power_cut``: the power failed, so
    the ESP may have been mounted (see fat_check)."""
    raw = work / "esp.raw"
    copy_partition(machine, "esp", raw, running)
    try:
        return fat_check(raw, power_cut)
    finally:
        raw.unlink()


@dataclass(frozen=True)
class FatCheck:
    clean: bool
    dirty: bool  # the "mounted" flag was set (and, after a power cut, cleared in the copy)
    report: str


def fat_check(raw: Path, power_cut: bool = False) -> FatCheck:
    """fsck.fat -n of the FAT file system in ``raw``. Linux sets the boot sector's "dirty"
    flag while it has a FAT mounted and clears it on unmount, so after a clean shutdown the
    flag counts like any other finding. After a power cut it only says that the ESP was
    mounted when the power failed (a real box shows the same): there the flag is cleared in
    ``raw`` (a copy) and reported, and everything else must be clean."""
    dirty = power_cut and clear_dirty_flag(raw)
    done = subprocess.run(["fsck.fat", "-n", "-v", str(raw)], capture_output=True, text=True)
    return FatCheck(done.returncode == 0, dirty, (done.stdout + done.stderr).strip())


def clear_dirty_flag(raw: Path) -> bool:
    """Clear the FAT's "volume dirty" flag (bit 0 of the boot sector's state byte: offset
    0x41 on FAT32, whose 16-bit FAT size field is 0, else 0x25); whether it was set."""
    with raw.open("r+b") as f:
        boot = f.read(512)
        offset = 0x41 if int.from_bytes(boot[22:24], "little") == 0 else 0x25
        if not boot[offset] & 1:
            return False
        f.seek(offset)
        f.write(bytes([boot[offset] & 0xFE]))
    return True


def data_digests(machine: Machine, work: Path) -> dict[str, str]:
    """sha256 of every file under KEPT on the (powered off) VM's data partition, read from its
    disk with qemu-img and debugfs: nothing is mounted, nothing in the guest is asked."""
    raw, tree = work / "data.raw", work / "data-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    copy_partition(machine, "spoke-data", raw)
    for name in KEPT:
        dest = tree / Path(name).parent
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debugfs", "-R", f"rdump /{name} {dest}", str(raw)], check=True,
                       capture_output=True)
    raw.unlink()
    digests = {str(f.relative_to(tree)): hashlib.sha256(f.read_bytes()).hexdigest()
               for f in sorted(tree.rglob("*")) if f.is_file()}
    shutil.rmtree(tree)
    return digests


def os_state(hub: Hub, device_id: str) -> dict[str, Any]:
    return dict((hub.device(device_id).get("state") or {}).get("os") or {})


def make_stick(bundle: Path, stick: Path) -> None:
    """A 16 MiB FAT volume labelled SPOKE holding the bundle, written without mounting."""
    stick.unlink(missing_ok=True)
    with stick.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-n", "SPOKE", str(stick)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mcopy", "-i", str(stick), str(bundle), "::/bundle.spoke"], check=True)


class Run:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        (self.passed if ok else self.failed).append(name)
        log(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if not ok:
            raise TestFailure(f"{name}: {detail}")


def online_device(hub: Hub, exclude: Collection[str] = ()) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        for d in hub.devices():
            if d["id"] not in exclude and d["availability"] == "online" and d.get("state"):
                return d
        return None
    return check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "build" / "boottest")
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("VENV", REPO / ".venv")))
    ap.add_argument("--reuse-image", action="store_true",
                    help="do not rebuild: reuse the image and hub home of the last run")
    ap.add_argument("--online-timeout", type=float, default=600)
    ap.add_argument("--update-timeout", type=float, default=2700)
    ap.add_argument("--versions", type=int, choices=(1, 2, 3), default=3,
                    help="1: version 1 only; 2: also the update to version 2 over the air; "
                         "3 (default): also a faulty version 3 and the rollback to 2")
    ap.add_argument("--finish-by", type=float, metavar="EPOCH",
                    help="a deadline (Unix time): after version 1's boots, skip the OS updates, "
                         "and say so, where they would end past it on this machine")
    args = ap.parse_args()
    args.update, args.rollback = args.versions >= 2, args.versions >= 3
    if not args.venv.is_absolute():
        args.venv = REPO / args.venv

    work: Path = args.work
    out_dir = work / "out"
    image = out_dir / "spoke-cpu.raw"
    hub = Hub(work / "hub", args.venv, work / "hub.log")
    run = Run()
    machine: Machine | None = None
    t_all = time.monotonic()
    try:
        pristine = work / "hub-pristine"  # the hub home as the image was built against it
        if args.reuse_image and image.exists() and pristine.exists():
            log(f"reusing {image} and its hub home, as it was before the last run")
            shutil.rmtree(hub.home, ignore_errors=True)
            shutil.copytree(pristine, hub.home, symlinks=True)
            hub.load_ports()
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            hub.init()
            shutil.copytree(hub.home, pristine, symlinks=True)
            log(f"hub home {hub.home}: MQTT 127.0.0.1:{hub.mqtt_port}, HTTP {hub.http_port}")
            t0 = time.monotonic()
            build(args.venv, hub, out_dir, "1", site_tree(work))
            run.timings["build_s"] = round(time.monotonic() - t0, 1)
        run.check("image built", image.exists(), str(image))
        run.timings["image_bytes"] = image.stat().st_size
        run.timings["image_used_bytes"] = image.stat().st_blocks * 512
        # Versions 2 and 3: derived from version 1's build (image/derive.py: another version
        # stamp, and for 3 a planted fault in its health check), not built again.
        v2, v3 = (work / f"out-{v}" / f"spoke-cpu_{v}.os" for v in ("2", "3"))
        updates = {"2": (v2, []), "3": (v3, [fault_tree(work)])}
        seconds = derive(out_dir, {version: (out.parent, trees)
                                   for version, (out, trees) in updates.items()
                                   if int(version) <= args.versions
                                   and not (args.reuse_image and out.exists())})
        for version, took in seconds.items():
            run.timings[f"derive_v{version}_s"] = took
        if args.update:
            run.timings["root_image_bytes"] = (v2 / "spoke_2.root.raw.gz").stat().st_size

        # The health gate of an OS update wants a model serving: one for the whole test.
        hub.cli("models", "publish", str(tiny_model(args.venv, work / "crack-vit-1.0.0")))
        hub.apply_policy(MODEL_POLICY)

        bundle, stick = work / "bundle.spoke", work / "spoke-stick.img"
        hub.bundle(bundle)
        make_stick(bundle, stick)
        hub.serve()
        accel = probe_kvm(image, work)
        run.timings["accel"] = accel  # type: ignore[assignment]

        machine = Machine(image, work, stick, hub, accel)
        machine.create()

        # Boot 1: zero touch, from the stick to online at the hub.
        t0 = time.monotonic()
        machine.start("first-boot")
        first = wait_for("the appliance online at the hub", online_device(hub),
                         args.online_timeout, alive=machine.dead)
        run.timings["first_boot_to_online_s"] = round(time.monotonic() - t0, 1)
        run.check("enrolled and online at the hub", True,
                  f"{first['id']} in {run.timings['first_boot_to_online_s']} s")
        labels = dict(kv.split("=", 1) for kv in LABELS.split(","))
        run.check("labels from the bundle", first["labels"] == labels, str(first["labels"]))
        run.check("reported state and hardware facts",
                  bool(first["state"]) and bool(first["facts"]), json.dumps(first["state"])[:200])
        key = (first["state"].get("certificate") or {}).get("key")
        want = "tpm" if machine.has_tpm else "file"  # no swtpm on the host: no TPM in the VM
        run.check(f"device key kept as {want}", key == want, f"key: {key}")
        running = first["state"].get("os") or {}
        run.check("runs OS version 1 from root slot spoke_1",
                  (running.get("version"), running.get("slot")) == ("1", "spoke_1"),
                  json.dumps(running)[:300])
        banner = wait_for(
            "the console banner", lambda: re.search(
                rf"spoke: device={re.escape(first['id'])} provisioning=enrolled hub=connected",
                machine.console()), 180, alive=machine.dead)
        run.check("console banner shows the device and the hub link", bool(banner))
        t0 = time.monotonic()
        model = wait_for("the model committed", lambda: (
            (m := (hub.device(first["id"]).get("state") or {}).get("model") or {})
            .get("state") == "committed" and m), args.online_timeout, alive=machine.dead)
        run.timings["model_committed_s"] = round(time.monotonic() - t0, 1)
        run.check("the model serves", model.get("version") == "1.0.0", json.dumps(model)[:200])

        # Boot 2: power off and on; it must come back as the same device, without enrolling.
        run.timings["shutdown_s"] = round(machine.power_off(), 1)
        check_esp(run, machine, work, "a clean shutdown")
        kept = data_digests(machine, work)
        log(f"data partition: {len(kept)} files kept under {', '.join(KEPT)}")
        after_off = {d["id"]: d for d in hub.devices()}
        run.check("hub saw it go away", after_off[first["id"]]["availability"] != "online",
                  after_off[first["id"]]["availability"])
        t0 = time.monotonic()
        machine.start("reboot")
        again = wait_for("the appliance online again", online_device(hub), args.online_timeout,
                         alive=machine.dead)
        run.timings["reboot_to_online_s"] = round(time.monotonic() - t0, 1)
        devices = hub.devices()
        run.check(
            "back online after reboot without enrolling again",
            again["id"] == first["id"] and len(devices) == 1
            and again["enrolled_at"] == first["enrolled_at"],
            f"{again['id']} in {run.timings['reboot_to_online_s']} s, {len(devices)} device(s)",
        )
        run.check("the stick is ignored once enrolled", "already enrolled" in machine.console())

        if args.update and args.finish_by:
            skipped = updates_past_deadline(run.timings, args.finish_by)
            if skipped:
                log(skipped)
                run.skipped.append(skipped)
                args.update = args.rollback = False
        if args.update:
            update_to_v2(run, hub, machine, first["id"], v2, args.update_timeout)
        if args.rollback:
            roll_back_from_v3(run, hub, machine, first["id"], v3, args.update_timeout)
        machine.power_off()
        if args.update:
            check_esp(run, machine, work, "the OS updates")
        after = data_digests(machine, work)
        changed = sorted(k for k in kept.keys() | after.keys() if kept.get(k) != after.get(k))
        run.check("identity, model and bundle on the data partition unchanged byte for byte",
                  not changed and bool(kept), f"{len(kept)} files; changed: {changed[:5]}")

        # Boot 3: factory reset from the kernel command line; it must provision itself again.
        t0 = time.monotonic()
        # (After an update, version 2's kernel: version 3 may hold the slot version 1 had.)
        machine.start("factory-reset", extra_cmdline="spoke.factory_reset=1",
                      direct=v2.parent / "spoke-cpu.raw" if args.update else None)
        fresh = wait_for("the reset appliance enrolled and online",
                         online_device(hub, {first["id"]}), args.online_timeout,
                         alive=machine.dead)
        run.timings["factory_reset_to_online_s"] = round(time.monotonic() - t0, 1)
        console = machine.console()
        run.check("factory reset wiped the data partition", "data partition" in console
                  and "wiped" in console)
        run.check("provisioned again after factory reset",
                  fresh["id"] != first["id"] and len(hub.devices()) == 2,
                  f"new id {fresh['id']} in {run.timings['factory_reset_to_online_s']} s")
        if args.rollback:
            # The hub still desires 3 (the policy says >=3); the reset box must not try it again.
            kept_os = wait_for("the reset box told that the hub desires version 3", lambda: (
                (s := os_state(hub, fresh["id"])).get("desired") == "3" and s),
                args.online_timeout, alive=machine.dead)
            last = kept_os.get("last_update") or {}
            run.check("the reset box remembers that version 3 rolled back and does not stage it",
                      (last.get("version"), last.get("outcome")) == ("3", "rolled-back")
                      and kept_os.get("desired") == "3" and kept_os.get("staged") is None
                      and "kept the record of the OS versions" in console,
                      json.dumps(kept_os)[:400])
        machine.power_off()
    except (TestFailure, subprocess.CalledProcessError) as exc:
        if not isinstance(exc, TestFailure) or not run.failed:
            run.failed.append(str(exc))
        log(f"FAILED: {exc}")
        dump_logs(work, machine)
    finally:
        if machine is not None:
            machine.kill()
        hub.stop()
    run.timings["total_s"] = round(time.monotonic() - t_all, 1)
    resets = machine.watchdog_resets if machine is not None else []
    if machine is not None:
        machine.count_emergency_reboots()
    emergencies = machine.emergency_reboots if machine is not None else []
    (work / "results.json").write_text(json.dumps(
        {"passed": run.passed, "failed": run.failed, "skipped": run.skipped,
         "timings": run.timings,
         "emulated_watchdog_resets": resets, "emergency_reboots": emergencies}, indent=2))
    log("timings: " + json.dumps(run.timings))
    note = "" if not resets else (
        f"; {len(resets)} boot(s) hung in the firmware and were reset by the harness's "
        f"emulated reboot watchdog (evidence: {', '.join(r['evidence'] for r in resets)})")
    if emergencies:
        note += (f"; {len(emergencies)} boot(s) failed and rebooted themselves from emergency "
                 f"mode ({', '.join(r['serial'] for r in emergencies)})")
    note += "".join(f"; {why}" for why in run.skipped)
    # The reason again on the last line: a CI that keeps only the output's tail loses the FAILED
    # line above the logs (session 16's did).
    failed = f" ({run.failed[-1][:300]})" if run.failed else ""
    print(f"image-test: {len(run.passed)} passed, {len(run.failed)} failed{failed}{note}",
          flush=True)
    return 1 if run.failed else 0


def updates_past_deadline(timings: dict[str, float], finish_by: float) -> str | None:
    """Why the OS updates are skipped, or None where version 1's boots say they end in time."""
    boots = timings["first_boot_to_online_s"] + timings["reboot_to_online_s"]
    need, left = UPDATES_PER_V1_BOOTS * boots, finish_by - time.time()
    if need <= left:
        return None
    return (f"OS updates not run: about {need / 60:.0f} min here ({UPDATES_PER_V1_BOOTS} times "
            f"version 1's two boots, {boots:.0f} s), {max(left, 0) / 60:.0f} min left "
            f"before --finish-by")


def back_online(hub: Hub, machine: Machine, device: str, what: str,
                timeout: float) -> dict[str, Any]:
    """The OS state ``device`` reports once online again: the hub first sees it gone (the
    broker notices the killed VM's connection close), then back with a new report."""
    wait_for(f"the hub seeing the device gone {what}",
             lambda: hub.device(device).get("availability") != "online", 300)
    wait_for(f"the device online again {what}",
             lambda: hub.device(device).get("availability") == "online", timeout,
             alive=machine.dead)
    return os_state(hub, device)


def check_esp(run: Run, machine: Machine, work: Path, after: str,
              power_cut: bool = False) -> None:
    fat = esp_check(machine, work, power_cut=power_cut)
    detail = fat.report[-800:] if not fat.clean else (
        "dirty flag set: mounted when the power failed; otherwise clean" if fat.dirty else "")
    run.check(f"the ESP's FAT file system is clean after {after}", fat.clean, detail)


def update_to_v2(run: Run, hub: Hub, machine: Machine, device: str, v2: Path,
                 timeout: float) -> None:
    """Version 2, published on the hub: staged by systemd-sysupdate into the empty root slot,
    booted with tries left, committed once its health gate passed. The power fails twice on
    the way (QEMU killed): while sysupdate writes the new slot, and while the box boots it."""
    t0 = time.monotonic()
    hub.cli("os", "publish", str(v2))
    run.timings["publish_v2_s"] = round(time.monotonic() - t0, 1)
    start_bytes = machine.allocated()
    hub.apply_policy(MODEL_POLICY + 'os_version = ">=2"\n')

    # Power loss 1: once the disk has grown by the compressed root image (the download, on the
    # data partition) and a quarter GiB more, sysupdate is inflating it into the empty slot.
    download = (v2 / "spoke_2.root.raw.gz").stat().st_size
    t0 = time.monotonic()
    grown = wait_for("version 2 being written into the empty slot", lambda: (
        (g := machine.allocated() - start_bytes) > download + 256 * 2**20 and g),
        timeout, every=2, alive=machine.dead)
    state = os_state(hub, device)
    machine.kill()
    run.timings["v2_publish_to_power_loss_s"] = round(time.monotonic() - t0, 1)
    run.check("power lost while sysupdate wrote version 2 into the empty slot",
              state.get("staged") != "2" and state.get("version") == "1",
              f"disk grew {grown / 2**20:.0f} MiB (download {download / 2**20:.0f} MiB); "
              f"reported: {json.dumps(state)[:200]}")
    check_esp(run, machine, machine.work, "the power loss while staging", power_cut=True)
    machine.start("power-loss-staging")
    back = back_online(hub, machine, device, "after the power loss while staging", timeout)
    run.check("after the power loss while staging it boots version 1 in slot spoke_1",
              (back.get("version"), back.get("slot")) == ("1", "spoke_1"),
              json.dumps(back)[:300])

    t0 = time.monotonic()
    wait_for("version 2 staged", lambda: (os_state(hub, device).get("staged") == "2"
                                          or os_state(hub, device).get("version") == "2"),
             timeout, every=5, alive=machine.dead)
    run.timings["v2_download_and_stage_s"] = round(time.monotonic() - t0, 1)

    # Power loss 2: the box rebooted itself into version 2 (this QEMU process goes on) and
    # version 2's kernel runs, before its health gate: on probation, a try spent.
    wait_for("version 2's kernel running after the reboot", lambda: kernel_after_reboot(
        machine.console(), machine.restarted_by_watchdog), timeout, every=2, alive=machine.dead)
    machine.kill()
    check_esp(run, machine, machine.work, "the power loss while booting version 2",
              power_cut=True)
    machine.start("power-loss-booting")
    state = wait_for("version 2 committed", lambda: (
        (s := os_state(hub, device)).get("version") == "2"
        and s.get("state") == "committed" and s), timeout, every=10,
        alive=machine.dead)
    run.timings["v2_staged_to_committed_s"] = round(
        time.monotonic() - t0 - run.timings["v2_download_and_stage_s"], 1)
    last = state.get("last_update") or {}
    run.check("power lost while booting version 2: it boots version 2 again and commits it "
              "(health gate passed)",
              state.get("slot") == "spoke_2" and last.get("outcome") == "committed",
              json.dumps(state)[:400])


def roll_back_from_v3(run: Run, hub: Hub, machine: Machine, device: str, v3: Path,
                      timeout: float) -> None:
    """Version 3, broken: its first boot hangs (the kernel crashes; the hardware watchdog
    resets the box), its other boots fail the health gate and reboot, its tries run out, and
    systemd-boot falls back to version 2 by itself."""
    t0 = time.monotonic()
    hub.cli("os", "publish", str(v3))
    hub.apply_policy(MODEL_POLICY + 'os_version = ">=3"\n')
    crashed = wait_for("version 3's first boot crashing", lambda: CRASH in machine.console(),
                       timeout, every=2, alive=machine.dead)
    t_crash = time.monotonic()
    # The watchdog resets within two of its periods (1 min): 10 min means it never will.
    try:
        reset = wait_for("the watchdog's reset of the hung box",
                         lambda: reset_after_crash(machine), 600, every=2, alive=machine.dead)
    except TestFailure as exc:
        regs = machine.registers()
        rip = instruction_pointer(regs)
        where = ("QEMU did not say where the vCPU is" if rip is None else
                 f"the vCPU is in {'the firmware' if in_firmware(regs) else 'the kernel'} "
                 f"(RIP={rip:016x})")
        raise TestFailure(f"{exc}; {where}") from exc
    run.timings["v3_crash_to_watchdog_reset_s"] = round(time.monotonic() - t_crash, 1)
    run.check("a hung box (version 3's kernel crashed) is reset by its hardware watchdog",
              bool(crashed and reset) and "Rebooting in" not in reset,
              f"reset {run.timings['v3_crash_to_watchdog_reset_s']} s after the crash")
    state = wait_for("the rollback from version 3", lambda: (
        (s := os_state(hub, device)).get("version") == "2"
        and (s.get("last_update") or {}).get("outcome") == "rolled-back" and s),
        timeout, every=10, alive=machine.dead)
    run.timings["v3_publish_to_rolled_back_s"] = round(time.monotonic() - t0, 1)
    last = state.get("last_update") or {}
    run.check("version 3 failed its health gate and systemd-boot fell back to version 2",
              last.get("version") == "3" and state.get("slot") == "spoke_2"
              and str(last.get("reason", "")).startswith("rolled back: spoke-health failed: "),
              json.dumps(state)[:400])
    shown = hub.device(device).get("os_image") or ""
    run.check("spoke-hub devices shows version 2 with the rollback and its reason",
              shown.startswith("2 ") and "3 rolled-back" in shown
              and "hub not reached since the daemon started" in shown, shown)


def reset_after_crash(machine: Machine) -> str | None:
    """The console from the kernel's crash to the firmware's next boot-option line, once a
    reset has come between them; or, when that reset hung in the firmware and the harness
    started the machine again (stuck_in_firmware), the crashed boot's console up to its end."""
    if found := re.search(re.escape(CRASH) + r".*?BdsDxe: loading", machine.console(), re.S):
        return found.group(0)
    if machine.restarted_by_watchdog and PANIC_END in machine.watchdog_resets[-1]["line"]:
        crashed = (machine.work / machine.watchdog_resets[-1]["serial"]).read_text(errors="replace")
        return crashed[crashed.find(CRASH):]
    return None


def dump_logs(work: Path, machine: Machine | None) -> None:
    for path in [*sorted(work.glob("serial-*.log")), work / "qemu.log", work / "swtpm.log",
                 work / "hub.log"]:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        text = re.sub(ANSI, "", text)
        print(f"----- {path.name} (last 150 lines) -----")
        print("\n".join(text.splitlines()[-150:]))
    print("----- end of logs -----", flush=True)


if __name__ == "__main__":
    sys.exit(main())
