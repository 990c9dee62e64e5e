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
6. boots it once with spoke.factory_reset=1 and asserts that it provisions itself again.

Each boot's serial console goes to a log file; on failure the logs are printed. Timings go to
the results file (and docs/BENCHMARKS.md by hand). The last line is "N passed, N failed".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUEST_HUB_IP = "10.0.2.100"  # inside slirp's 10.0.2.0/24; forwarded to the host's loopback
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
LABELS = "site=qemu-boot-test,region=ci"


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

    def start(self, name: str, extra_cmdline: str | None = None) -> None:
        """Boot through OVMF, systemd-boot and the UKI; or, given extra kernel command-line
        arguments, boot the same kernel and initrd directly with them added (what a technician
        does by editing the boot entry once)."""
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
            base = self.image.with_suffix("")
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
        return None

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace") if self.serial else ""
        except FileNotFoundError:
            return ""

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.work / "qmp.sock"))
            f = s.makefile("rw")
            f.readline()  # greeting
            for c in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": c}) + "\n")
                f.flush()
                f.readline()

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

    def kill(self) -> None:
        for proc in (self.proc, self.tpm):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


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
        self.timings: dict[str, float] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        (self.passed if ok else self.failed).append(name)
        log(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if not ok:
            raise TestFailure(f"{name}: {detail}")


def online_device(hub: Hub, exclude: set[str] = frozenset()) -> Callable[[], dict[str, Any] | None]:
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
    args = ap.parse_args()
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
        if args.reuse_image and image.exists() and (work / "hub" / "hub.toml").exists():
            log(f"reusing {image} and its hub home")
            hub.load_ports()
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            hub.init()
            log(f"hub home {hub.home}: MQTT 127.0.0.1:{hub.mqtt_port}, HTTP {hub.http_port}")
            t0 = time.monotonic()
            subprocess.run(
                ["bash", str(HERE / "build.sh"), "--profile", "cpu", "--hub-home", str(hub.home),
                 "--output-dir", str(out_dir)], check=True,
                env={**os.environ, "VENV": str(args.venv)},
            )
            run.timings["build_s"] = round(time.monotonic() - t0, 1)
        run.check("image built", image.exists(), str(image))
        run.timings["image_bytes"] = image.stat().st_size
        run.timings["image_used_bytes"] = image.stat().st_blocks * 512

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
        banner = wait_for(
            "the console banner", lambda: re.search(
                rf"spoke: device={re.escape(first['id'])} provisioning=enrolled hub=connected",
                machine.console()), 180, alive=machine.dead)
        run.check("console banner shows the device and the hub link", bool(banner))

        # Boot 2: power off and on; it must come back as the same device, without enrolling.
        run.timings["shutdown_s"] = round(machine.power_off(), 1)
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

        # Boot 3: factory reset from the kernel command line; it must provision itself again.
        machine.power_off()
        t0 = time.monotonic()
        machine.start("factory-reset", extra_cmdline="spoke.factory_reset=1")
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
    (work / "results.json").write_text(json.dumps(
        {"passed": run.passed, "failed": run.failed, "timings": run.timings}, indent=2))
    log("timings: " + json.dumps(run.timings))
    print(f"image-test: {len(run.passed)} passed, {len(run.failed)} failed", flush=True)
    return 1 if run.failed else 0


def dump_logs(work: Path, machine: Machine | None) -> None:
    for path in [*sorted(work.glob("serial-*.log")), work / "qemu.log", work / "swtpm.log",
                 work / "hub.log"]:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        text = re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]", "", text)
        print(f"----- {path.name} (last 150 lines) -----")
        print("\n".join(text.splitlines()[-150:]))
    print("----- end of logs -----", flush=True)


if __name__ == "__main__":
    sys.exit(main())
