"""image/derive.py: another OS version from a built one (a new stamp and an overlay over its
root file system and UKI), on a small disk image made with the real tools (mkfs.ext4, sfdisk,
ukify with systemd's stub), published with the real `spoke-hub os publish`; each refusal leaves
the source build as it was."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.provisioning.test_os_publish import home, publish  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
DERIVE = REPO / "image" / "derive.py"
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
UKIFY = Path("/usr/lib/systemd/ukify")
CMDLINE = "root=PARTLABEL=spoke_1 rw console=ttyS0,115200 quiet"
OS_RELEASE = 'ID=debian\nVERSION_ID="12"\nIMAGE_ID="spoke"\nIMAGE_VERSION="1"\n'

pytestmark = pytest.mark.skipif(
    not (STUB.exists() and UKIFY.exists() and shutil.which("debugfs") and shutil.which("sfdisk")),
    reason="needs systemd-boot-efi's stub, ukify, debugfs and sfdisk (image/host-setup.sh)")


def load_derive() -> ModuleType:
    spec = importlib.util.spec_from_file_location("derive", DERIVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


derive = load_derive()


def built(tmp_path: Path, label: str = "spoke_1") -> Path:
    """What image/build.sh leaves in its output directory, in small: spoke-cpu.raw (a GPT disk
    whose root partition holds an ext4 root) and its UKI spoke-cpu.efi."""
    tree = tmp_path / "tree"
    for path, text in {
        "usr/lib/os-release": OS_RELEASE,
        "usr/share/spoke/build-info": "flavour=cpu\n",
        "usr/bin/tool": "#!/bin/sh\necho unchanged\n",
        "etc/systemd/network/80-spoke-wired.network": "[Match]\nType=ether\n",
    }.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    stub = tree / "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
    stub.parent.mkdir(parents=True)
    shutil.copyfile(STUB, stub)
    out = tmp_path / "out"
    out.mkdir()
    root = tmp_path / "root.raw"
    subprocess.run(["mkfs.ext4", "-q", "-L", label, "-d", str(tree), str(root), "16M"],
                   check=True)
    disk = out / "spoke-cpu.raw"
    with disk.open("wb") as f:
        f.truncate(18 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True, input=(
        "label: gpt\nstart=2048, size=32768, "
        f"type={derive.ROOT_TYPE}, name={label}\n"))
    subprocess.run(["dd", f"if={root}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc",
                    "status=none"], check=True)
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"kernel " * 3000)
    initrd.write_bytes(b"initrd " * 2000)
    subprocess.run(["/usr/bin/python3", str(UKIFY), "build", f"--linux={kernel}",
                    f"--initrd={initrd}", f"--cmdline={CMDLINE}",
                    f"--os-release=@{tree / 'usr/lib/os-release'}", "--uname=6.1.0-test",
                    f"--stub={STUB}", f"--output={out / 'spoke-cpu.efi'}"],
                   check=True, capture_output=True)
    return out


def run_derive(out: Path, version: str, *trees: Path,
               kernel_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(DERIVE), "--from", str(out), "--version", version,
           "--output-dir", str(out.parent / f"out-{version}")]
    for tree in trees:
        cmd += ["--extra-tree", str(tree)]
    for arg in kernel_args:
        cmd += ["--kernel-arg", arg]
    return subprocess.run(cmd, capture_output=True, text=True)


def fault(tmp_path: Path) -> Path:
    tree = tmp_path / "fault"
    dropin = tree / "etc/systemd/system/spoke-health.service.d/50-fault.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nEnvironment=SPOKE_OS__HUB_GRACE_S=1\n")
    network = tree / "etc/systemd/network/80-spoke-wired.network"
    network.parent.mkdir(parents=True)
    network.write_text("[Match]\nName=no-such-port\n")
    return tree


def cat(fs: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], check=True,
                          capture_output=True, text=True).stdout


def superblock(fs: Path) -> dict[str, str]:
    text = subprocess.run(["dumpe2fs", "-h", str(fs)], check=True, capture_output=True,
                          text=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                 text.splitlines()) if v}


def fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def root_of(update: Path, version: str, tmp_path: Path) -> Path:
    fs = tmp_path / f"root-{version}.raw"
    fs.write_bytes(gzip.decompress((update / f"spoke_{version}.root.raw.gz").read_bytes()))
    return fs


def test_a_derived_version_carries_its_stamp_and_overlay_and_nothing_else(tmp_path: Path):
    out = built(tmp_path)
    proc = run_derive(out, "3", fault(tmp_path))
    assert proc.returncode == 0, proc.stderr
    update = tmp_path / "out-3" / "spoke-cpu_3.os"
    assert json.loads((update / "manifest.json").read_text()) == {
        "version": "3", "architecture": "x86-64"}
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=update, check=True)

    fs, old = root_of(update, "3", tmp_path), tmp_path / "root.raw"
    assert subprocess.run(["e2fsck", "-fn", str(fs)], capture_output=True).returncode == 0
    new_sb, old_sb = superblock(fs), superblock(old)
    assert new_sb["Filesystem volume name"] == "spoke_3"
    assert new_sb["Filesystem UUID"] != old_sb["Filesystem UUID"]
    assert cat(fs, "/usr/lib/os-release") == OS_RELEASE.replace('"1"', '"3"')
    assert cat(fs, "/usr/bin/tool") == cat(old, "/usr/bin/tool")
    assert cat(fs, "/etc/systemd/network/80-spoke-wired.network") == "[Match]\nName=no-such-port\n"
    dropin = "/etc/systemd/system/spoke-health.service.d/50-fault.conf"
    assert "HUB_GRACE_S=1" in cat(fs, dropin)
    stat = subprocess.run(["debugfs", "-R", f"stat {dropin}", str(fs)], check=True,
                          capture_output=True, text=True).stdout
    assert "Mode:  0644" in stat and "User:     0   Group:     0" in stat
    info = cat(fs, "/usr/share/spoke/build-info")
    assert info.startswith("flavour=cpu\n") and "derived=version 3 from 1" in info

    old_uki = derive.pe_sections(out / "spoke-cpu.efi")
    new_uki = derive.pe_sections(update / "spoke_3.efi")
    assert derive.text_of(new_uki, ".cmdline") == CMDLINE.replace("spoke_1", "spoke_3")
    assert 'IMAGE_VERSION="3"' in derive.text_of(new_uki, ".osrel")
    for name in (".linux", ".initrd", ".uname"):
        assert new_uki[name] == old_uki[name], name
    # The direct-boot files beside it (the boot test's factory-reset boot uses them).
    assert (tmp_path / "out-3" / "spoke-cpu.vmlinuz").read_bytes() == old_uki[".linux"]


def test_a_kernel_arg_replaces_the_argument_of_its_name_or_is_added(tmp_path: Path):
    """How the boot test plants "the root never appears" quickly: a short device timeout."""
    out = built(tmp_path)
    proc = run_derive(out, "2", kernel_args=("quiet=no", "systemd.default_device_timeout_sec=20"))
    assert proc.returncode == 0, proc.stderr
    uki = derive.pe_sections(tmp_path / "out-2" / "spoke-cpu_2.os" / "spoke_2.efi")
    assert derive.text_of(uki, ".cmdline") == (
        "root=PARTLABEL=spoke_2 rw console=ttyS0,115200 quiet=no "
        "systemd.default_device_timeout_sec=20")


def test_a_derived_version_publishes_as_signed_os_targets(tmp_path: Path, home: Path):  # noqa: F811
    out = built(tmp_path)
    assert run_derive(out, "2").returncode == 0
    row = json.loads(publish(home, tmp_path / "out-2" / "spoke-cpu_2.os").stdout)
    assert row["target"] == "os/2/manifest.json"


def refused(tmp_path: Path, out: Path, version: str, *trees: Path) -> str:
    before = fingerprint(out)
    proc = run_derive(out, version, *trees)
    assert proc.returncode == 1
    assert fingerprint(out) == before  # the source build is as it was
    assert not (tmp_path / f"out-{version}" / f"spoke-cpu_{version}.os").exists()
    line = proc.stderr.strip()
    assert line.startswith("derive.py: ") and "\n" not in line
    return line


def test_a_malformed_version_is_refused(tmp_path: Path):
    line = refused(tmp_path, built(tmp_path), "v2")
    assert "must start with a digit" in line


def test_the_source_version_again_is_refused(tmp_path: Path):
    line = refused(tmp_path, built(tmp_path), "1")
    assert "already is version 1" in line


def test_a_source_without_its_root_slot_is_refused(tmp_path: Path):
    line = refused(tmp_path, built(tmp_path, label="rootfs"), "2")
    assert "no root partition labelled spoke_1" in line


def test_a_source_without_a_uki_is_refused(tmp_path: Path):
    out = built(tmp_path)
    (out / "spoke-cpu.efi").unlink()
    line = refused(tmp_path, out, "2")
    assert "spoke-cpu.efi is missing" in line


def test_a_symlink_in_an_extra_tree_is_refused(tmp_path: Path):
    tree = fault(tmp_path)
    (tree / "etc/link").symlink_to("/etc/shadow")
    line = refused(tmp_path, built(tmp_path), "2", tree)
    assert "only directories and regular files" in line


def test_a_name_debugfs_cannot_quote_is_refused(tmp_path: Path):
    tree = fault(tmp_path)
    (tree / "etc/two words.conf").write_text("x\n")
    line = refused(tmp_path, built(tmp_path), "2", tree)
    assert "a quote, space or newline" in line
