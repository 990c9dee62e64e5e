"""The OS update files the image ships: the health gate unit and the sysupdate transfers agree
with the daemon (where it prepares the source, which command gates the boot)."""

import configparser
import re
import subprocess
from pathlib import Path

from daemon.osupdate.service import request_reboot
from daemon.osupdate.update import source_dir
from tests.image.test_image_recipe import EXTRA, MKOSI, UNITS, unit

SYSUPDATE_D = EXTRA / "usr/lib/sysupdate.d"


def test_spoke_health_gates_boot_complete():
    u = unit("spoke-health.service")
    assert u["Install"]["RequiredBy"] == "boot-complete.target"
    assert "boot-complete.target" in u["Unit"]["Before"]
    assert "spoke health-gate --state-dir /var/lib/spoke" in u["Service"]["ExecStart"]
    preset = (EXTRA / "usr/lib/systemd/system-preset/50-spoke.preset").read_text()
    assert "enable spoke-health.service" in preset.splitlines()


def test_the_transfers_read_the_source_the_daemon_prepares():
    expected = f"Path=file://{source_dir(Path('/var/lib/spoke'))}"
    confs = sorted(SYSUPDATE_D.glob("*.conf"))
    assert [c.name for c in confs] == ["50-root.conf", "60-uki.conf"]
    for conf in confs:
        assert expected in conf.read_text().splitlines(), conf.name


def test_the_running_version_is_never_overwritten_and_the_uki_counts_tries():
    for conf in SYSUPDATE_D.glob("*.conf"):
        assert "ProtectVersion=%A" in conf.read_text().splitlines(), conf.name
    assert "TriesLeft=3" in (SYSUPDATE_D / "60-uki.conf").read_text().splitlines()


def test_spoke_health_unit_has_no_unknown_settings():
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no",
         str(EXTRA / "usr/lib/systemd/system/spoke-health.service")],
        capture_output=True, text=True)
    bad = [line for line in proc.stderr.splitlines()
           if "spoke-health.service" in line and "Unknown" in line]
    assert not bad, proc.stderr


def test_the_staging_unit_watches_the_request_the_daemon_writes():
    path_unit = unit("spoke-os-stage.path")
    assert path_unit["Path"]["PathExists"] == "/var/lib/spoke/os/stage-request"
    assert unit("spoke-os-stage.service")["Service"]["ExecStart"] == "/usr/lib/spoke/os-stage"
    preset = (EXTRA / "usr/lib/systemd/system-preset/50-spoke.preset").read_text()
    assert "enable spoke-os-stage.path" in preset.splitlines()


def test_the_reboot_unit_watches_the_request_the_daemon_writes(tmp_path: Path):
    request_reboot(tmp_path)
    written = tmp_path / "os" / "reboot-request"
    assert written.read_text() == "reboot\n"
    watched = Path(unit("spoke-os-reboot.path")["Path"]["PathExists"])
    assert watched.relative_to("/var/lib/spoke") == written.relative_to(tmp_path)
    service = (UNITS / "spoke-os-reboot.service").read_text().splitlines()
    # The request goes before the reboot, or the next boot would reboot again.
    assert service.index(f"ExecStart=/usr/bin/rm -f {watched}") < service.index(
        "ExecStart=/usr/bin/systemctl reboot")
    preset = (EXTRA / "usr/lib/systemd/system-preset/50-spoke.preset").read_text()
    assert "enable spoke-os-reboot.path" in preset.splitlines()


def test_a_failed_gate_reboots_only_a_boot_on_probation():
    assert unit("spoke-health.service")["Unit"]["OnFailure"] == "spoke-health-failed.service"
    failed = unit("spoke-health-failed.service")
    # systemd-boot sets LoaderBootCountPath only when the entry it booted still counts tries.
    assert failed["Unit"]["ConditionPathExists"] == (
        "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")
    assert failed["Service"]["ExecStart"] == "/usr/bin/systemctl reboot"


def repart(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(MKOSI / "mkosi.repart" / name)
    return parser


def test_two_root_slots_of_one_size_and_a_data_partition_never_exported():
    a, b = repart("10-root.conf")["Partition"], repart("11-root-b.conf")["Partition"]
    assert a["Type"] == b["Type"] == "root"
    # sysupdate's partition transfer matches spoke_@v and takes "_empty" for a new version.
    assert (a["Label"], b["Label"]) == ("spoke_%A", "_empty")
    assert a["SizeMinBytes"] == a["SizeMaxBytes"] == b["SizeMinBytes"] == b["SizeMaxBytes"]
    assert "MatchPattern=spoke_@v" in (SYSUPDATE_D / "50-root.conf").read_text().splitlines()
    # Only slot A becomes an update artefact; the data partition is never in one.
    assert b["SplitName"] == "-" and repart("20-data.conf")["Partition"]["SplitName"] == "-"


def test_each_boot_entry_mounts_its_own_root_slot():
    conf = (MKOSI / "mkosi.conf").read_text()
    assert "UnifiedKernelImageFormat=%i_%v" in conf.splitlines()
    assert re.search(r"^KernelCommandLine=root=PARTLABEL=%i_%v ", conf, re.M)
    # The UKI transfer's names are the same ones: spoke_<version>.efi (+ tries).
    assert "MatchPattern=spoke_@v+@l-@d.efi spoke_@v+@l.efi spoke_@v.efi" in (
        SYSUPDATE_D / "60-uki.conf").read_text().splitlines()


def test_systemd_comes_from_backports_with_sysupdate_and_its_download_helper():
    build = (MKOSI.parent / "build.sh").read_text()
    listed = re.search(r'systemd_debs="([^"]+)"', build)
    assert listed, "build.sh names the systemd packages it takes from backports"
    # Those with an exact-version dependency on each other must all come along.
    assert {"systemd", "systemd-boot", "systemd-boot-efi", "systemd-container", "udev",
            "libsystemd0", "libsystemd-shared", "libudev1"} <= set(listed.group(1).split())
    assert "/bookworm-backports" in build and '--package-directory "$debs"' in build
    packages = (MKOSI / "mkosi.conf").read_text()
    assert re.search(r"^\s+systemd-container$", packages, re.M)
