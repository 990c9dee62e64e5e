"""The image recipe, checked on the build host without building or booting (that is
`make image-test`): the daemon unit's hardening, the first-boot bundle import's rules, and
emergency and rescue mode rebooting (in the root file system and the initrd) instead of a shell."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MKOSI = REPO / "image" / "mkosi"
EXTRA = MKOSI / "mkosi.extra"
UNITS = EXTRA / "usr" / "lib" / "systemd" / "system"
IMPORT_BUNDLE = EXTRA / "usr" / "lib" / "spoke" / "import-bundle"
BIN = Path(sys.executable).parent


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def _analyze_offline_supported() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"systemd (\d+)", out)
    return bool(m) and int(m.group(1)) >= 250  # security --offline= arrived in 250


@pytest.mark.skipif(not _analyze_offline_supported(), reason="needs systemd-analyze >= 250")
def test_spoke_service_exposure_is_at_most_3() -> None:
    out = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            str(UNITS / "spoke.service"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Overall exposure level for spoke\.service: ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) <= 3.0, out


def test_spoke_service_is_notify_with_watchdog_and_restart() -> None:
    s = unit("spoke.service")["Service"]
    assert (s["Type"], s["Restart"]) == ("notify", "on-failure")
    assert s["WatchdogSec"]


def test_spoke_service_runs_as_its_own_user_with_state_directory() -> None:
    s = unit("spoke.service")["Service"]
    assert (s["User"], s["StateDirectory"]) == ("spoke", "spoke")
    sysusers = (EXTRA / "usr/lib/sysusers.d/spoke.conf").read_text()
    assert re.search(r"^u spoke ", sysusers, re.M)


def test_spoke_service_hardening_switches_are_on() -> None:
    s = unit("spoke.service")["Service"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    # /dev is the host's (PrivateDevices= would hide the TPM), but the device cgroup lets the
    # daemon open only the TPM's resource manager, which seals its key.
    assert (s["DevicePolicy"], s["DeviceAllow"]) == ("closed", "/dev/tpmrm0 rw")


def test_daemon_waits_for_the_data_partition() -> None:
    assert "/var/lib/spoke" in unit("spoke.service")["Unit"]["RequiresMountsFor"]
    fstab = (EXTRA / "etc/fstab").read_text()
    assert re.search(r"^PARTLABEL=spoke-data\s+/var/lib/spoke\s+ext4", fstab, re.M)
    repart = (MKOSI / "mkosi.repart/20-data.conf").read_text()
    assert "Label=spoke-data" in repart


def _seconds(value: str) -> float:
    """A systemd time span as this recipe writes them (30s, 1min, 10min)."""
    m = re.fullmatch(r"(\d+)(s|min)", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_pid1_keeps_the_hardware_watchdog_running() -> None:
    # A hung kernel or PID 1 is reset by the box's watchdog (docs/IMAGE.md, "The watchdog"):
    # on while running, and through a reboot, which may hang too.
    conf = configparser.ConfigParser(interpolation=None)
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read(EXTRA / "usr/lib/systemd/system.conf.d/50-spoke-watchdog.conf")
    manager = conf["Manager"]
    runtime = _seconds(manager["RuntimeWatchdogSec"])
    reboot = _seconds(manager["RebootWatchdogSec"])
    assert 0 < runtime <= 120, "a hung box must be reset within minutes"
    assert reboot >= 5 * runtime, "the reboot watchdog also runs through a slow next boot"


def test_factory_reset_runs_on_the_kernel_command_line_flag() -> None:
    u = (UNITS / "spoke-factory-reset.service").read_text()
    assert "ConditionKernelCommandLine=|spoke.factory_reset=1" in u
    assert "Before=var-lib-spoke.mount" in u


@pytest.mark.parametrize("mode", ["emergency", "rescue"])
def test_emergency_and_rescue_mode_reboot_instead_of_a_shell(mode: str) -> None:
    dropin = UNITS / f"{mode}.service.d" / "spoke-reboot.conf"
    lines = [x for x in dropin.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == ["[Unit]", "SuccessAction=reboot", "[Service]", "ExecStartPre=",
                     "ExecStart=", f"ExecStart=/bin/sh /usr/lib/spoke/boot-failed {mode}"]


def test_the_initrd_gets_the_same_drop_ins_and_script() -> None:
    """mkosi's default initrd does not take mkosi.extra: InitrdInclude= adds them to it."""
    assert re.search(r"^InitrdInclude=initrd$", (MKOSI / "mkosi.conf").read_text(), re.M)
    text = (MKOSI / "initrd" / "mkosi.conf").read_text()
    trees = re.findall(r"^(?:ExtraTrees=|\s+)(\S+):(\S+)$", text, re.M)
    for source, target in trees:
        assert (MKOSI / "initrd" / source).resolve() == (EXTRA / target.lstrip("/")).resolve()
        assert (EXTRA / target.lstrip("/")).is_file(), target
    assert sorted(target for _, target in trees) == [
        "/usr/lib/spoke/boot-failed",
        "/usr/lib/systemd/system/emergency.service.d/spoke-reboot.conf",
        "/usr/lib/systemd/system/rescue.service.d/spoke-reboot.conf"]


@pytest.mark.parametrize("script", ["import-bundle", "factory-reset", "os-stage",
                                    "boot-failed"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(EXTRA / "usr/lib/spoke" / script)], check=True)


# --- the first-boot import, run on the host against a real hub home and bundle ---------------


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hub") / "home"
    subprocess.run(
        [str(BIN / "spoke-hub"), "init", "--home", str(home), "--public-host", "127.0.0.1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return home


@pytest.fixture(scope="module")
def signed_bundle(hub_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle.spoke"
    subprocess.run(
        [
            str(BIN / "spoke-hub"),
            "bundle",
            "create",
            "--home",
            str(hub_home),
            "--labels",
            "site=test",
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="module")
def trust_key(hub_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("key") / "provisioning.pub"
    key.write_text(
        subprocess.run(
            [str(BIN / "spoke-hub"), "bundle", "pubkey", "--home", str(hub_home)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    return key


def import_bundle(tmp_path: Path, stick: Path, key: Path) -> subprocess.CompletedProcess[str]:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir(exist_ok=True)
    run.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SPOKE_STATE_DIR": str(state),
        "SPOKE_TRUST_KEY": str(key),
        "SPOKE_VENV": str(BIN.parent),
        "SPOKE_OWNER": f"{os.getuid()}:{os.getgid()}",
        "SPOKE_RUN_DIR": str(run),
    }
    return subprocess.run(
        ["sh", str(IMPORT_BUNDLE), "--dir", str(stick)], env=env, capture_output=True, text=True
    )


def test_import_copies_a_verified_bundle(
    tmp_path: Path, signed_bundle: Path, trust_key: Path
) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    shutil.copy(signed_bundle, stick / "site.spoke")
    result = import_bundle(tmp_path, stick, trust_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "state/bundle.spoke").read_bytes() == signed_bundle.read_bytes()


def test_import_refuses_an_altered_bundle_and_copies_nothing(
    tmp_path: Path, signed_bundle: Path, trust_key: Path
) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    data = bytearray(signed_bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    (stick / "bundle.spoke").write_bytes(bytes(data))
    result = import_bundle(tmp_path, stick, trust_key)
    assert result.returncode != 0
    assert "refused" in result.stdout
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == []


def test_import_refuses_a_bundle_signed_by_another_key(
    tmp_path: Path, signed_bundle: Path, hub_home: Path
) -> None:
    other = tmp_path / "other.pub"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "k")], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "k"), "-pubout", "-out", str(other)], check=True
    )
    stick = tmp_path / "stick"
    stick.mkdir()
    shutil.copy(signed_bundle, stick / "bundle.spoke")
    result = import_bundle(tmp_path, stick, other)
    assert result.returncode != 0
    assert not (tmp_path / "state/bundle.spoke").exists()


def test_import_ignores_sticks_once_enrolled(
    tmp_path: Path, signed_bundle: Path, trust_key: Path
) -> None:
    (tmp_path / "state/identity").mkdir(parents=True)
    (tmp_path / "state/identity/identity.json").write_text("{}")
    stick = tmp_path / "stick"
    stick.mkdir()
    shutil.copy(signed_bundle, stick / "bundle.spoke")
    result = import_bundle(tmp_path, stick, trust_key)
    assert result.returncode == 0
    assert "already enrolled" in result.stdout
    assert not (tmp_path / "state/bundle.spoke").exists()


def test_import_refuses_an_oversized_file(tmp_path: Path, trust_key: Path) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "bundle.spoke").write_bytes(b"x" * (1024 * 1024 + 1))
    result = import_bundle(tmp_path, stick, trust_key)
    assert result.returncode != 0
    assert "too big" in result.stdout


@pytest.mark.skipif(not _analyze_offline_supported(), reason="needs systemd-analyze >= 250")
def test_nvidia_flavour_keeps_exposure_at_most_3(tmp_path: Path) -> None:
    """The nvidia drop-in opens /dev to the GPU nodes only; the merged unit still scores <= 3."""
    dropin = (
        MKOSI
        / "mkosi.profiles/nvidia/mkosi.extra/usr/lib/systemd/system/spoke.service.d"
        / "nvidia.conf"
    ).read_text()
    merged = (
        (UNITS / "spoke.service")
        .read_text()
        .replace("[Install]", dropin.split("[Service]", 1)[1] + "\n[Install]")
    )
    (tmp_path / "spoke.service").write_text(merged)
    out = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            str(tmp_path / "spoke.service"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Overall exposure level for spoke\.service: ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) <= 3.0, out
