"""The OS update files the image ships: the health gate unit and the sysupdate transfers agree
with the daemon (where it prepares the source, which command gates the boot)."""

import subprocess
from pathlib import Path

from daemon.osupdate.update import source_dir
from tests.image.test_image_recipe import EXTRA, unit

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
