#!/usr/bin/env python3
"""Derive another OS version from a built image, without building it again.

    image/derive.py --from OUT_DIR --version V [--extra-tree DIR]... [--kernel-arg ARG]...
                    --output-dir DIR

A full mkosi build of a version takes 2 min on an idle 2-core machine and about 25 on a loaded
one; a version that differs from a built one only by its version stamp and a few files (the
boot test's v2 and its faulty v3) needs none of it. From OUT_DIR (what image/build.sh wrote:
spoke-PROFILE.raw and its UKI spoke-PROFILE.efi) this writes OUTPUT_DIR/spoke-PROFILE_V.os/,
the same update artefacts image/build.sh writes (manifest.json, SHA256SUMS, spoke_V.efi,
spoke_V.root.raw.gz), plus spoke-PROFILE.{efi,vmlinuz,initrd} for a direct kernel boot:

- the root file system: root slot A of the disk image, copied (sparse), edited in place with
  debugfs (nothing is mounted): IMAGE_VERSION=V in /usr/lib/os-release, each extra tree's
  files (root-owned, 0644), a line in /usr/share/spoke/build-info saying it was derived; then a
  new file-system UUID and the label spoke_V, checked with e2fsck, compressed with gzip -1;
- the UKI: ukify over the source UKI's own kernel, initrd and uname, with the stub from the
  root file system (the one mkosi used), the derived os-release, and the command line with
  root=PARTLABEL=spoke_V (each boot entry names its own root slot) and each --kernel-arg,
  which replaces the argument of the same name (e.g. systemd.default_device_timeout_sec=20,
  for a test whose planted fault is a root that never appears).

Nothing here signs anything: `spoke-hub os publish` checks the checksums and signs the result as
TUF targets, and the appliance checks it with TUF and systemd-sysupdate, as for a built version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What appliance/osupdate.py and image/build.sh allow as a version.
VERSION = re.compile(r"[0-9][A-Za-z0-9.+-]{0,63}")
STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
UKIFY = ["/usr/bin/python3", "/usr/lib/systemd/ukify"]
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # root-x86-64


class DeriveError(Exception):
    """The source build or the request is not something a version can be derived from."""


def pe_sections(path: Path) -> dict[str, bytes]:
    """The sections of a PE/COFF file by name (a UKI's .linux, .initrd, .cmdline, ...)."""
    data = path.read_bytes()
    if data[:2] != b"MZ":
        raise DeriveError(f"{path} is not a PE file (a UKI)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise DeriveError(f"{path} is not a PE file (a UKI)")
    count, = struct.unpack_from("<H", data, pe + 6)
    optional, = struct.unpack_from("<H", data, pe + 20)
    table = pe + 24 + optional
    sections = {}
    for i in range(count):
        entry = table + 40 * i
        name = data[entry:entry + 8].rstrip(b"\0").decode()
        vsize, _addr, raw_size, raw_at = struct.unpack_from("<IIII", data, entry + 8)
        sections[name] = data[raw_at:raw_at + min(vsize, raw_size)]
    return sections


def text_of(sections: dict[str, bytes], name: str) -> str:
    if name not in sections:
        raise DeriveError(f"the source UKI has no {name} section")
    return sections[name].rstrip(b"\0").decode().strip()


def root_partition(image: Path, version: str) -> tuple[int, int]:
    """(offset, size) in bytes of the root partition labelled spoke_<version>."""
    done = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        raise DeriveError(f"{image}: no partition table ({done.stderr.strip()})")
    table = json.loads(done.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for part in table.get("partitions", []):
        if part.get("name") == f"spoke_{version}" and part.get("type", "").upper() == ROOT_TYPE:
            return int(part["start"]) * sector, int(part["size"]) * sector
    raise DeriveError(f"{image} has no root partition labelled spoke_{version}")


def copy_sparse(src: Path, offset: int, size: int, dest: Path, chunk: int = 1 << 20) -> None:
    """``size`` bytes of ``src`` from ``offset`` into ``dest``, leaving zero blocks as holes."""
    zero = bytes(chunk)
    with src.open("rb") as fin, dest.open("wb") as fout:
        fin.seek(offset)
        left = size
        while left:
            block = fin.read(min(chunk, left))
            if not block:
                raise DeriveError(f"{src} ends inside its root partition")
            if block == zero[:len(block)]:
                fout.seek(len(block), os.SEEK_CUR)
            else:
                fout.write(block)
            left -= len(block)
        fout.truncate(size)


def debugfs(fs: Path, *commands: str, write: bool = False) -> str:
    """Run debugfs commands on the file-system image ``fs``; returns their output."""
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        done = subprocess.run(["debugfs", *(["-w"] if write else []), "-f", script.name,
                               str(fs)], capture_output=True, text=True)
    # debugfs exits 0 even when a command failed; every line on stderr but its banner is one.
    errors = [line for line in done.stderr.splitlines() if not line.startswith("debugfs ")]
    if done.returncode != 0 or errors:
        raise DeriveError(f"debugfs on {fs}: {'; '.join(errors) or done.returncode}")
    return done.stdout


def read(fs: Path, path: str) -> str:
    """The text of ``path`` in the file-system image ``fs``."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True,
                          text=True)
    if done.returncode != 0 or not exists(fs, path):
        raise DeriveError(f"the root file system has no {path}")
    return done.stdout


def exists(fs: Path, path: str) -> bool:
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True,
                         text=True)
    return out.returncode == 0 and "Inode:" in out.stdout


def put_file(fs: Path, local: Path, path: str) -> list[str]:
    """debugfs commands that put ``local`` at ``path``, root-owned, mode 0644 (replacing it)."""
    cmds = [f"rm {path}"] if exists(fs, path) else []
    return [*cmds, f"write {local} {path}", f"sif {path} mode 0100644", f"sif {path} uid 0",
            f"sif {path} gid 0"]


def check_tree(tree: Path) -> None:
    """An extra tree holds directories and regular files only (what debugfs can place)."""
    if not tree.is_dir():
        raise DeriveError(f"--extra-tree {tree} is not a directory")
    for local in tree.rglob("*"):
        if local.is_symlink() or not (local.is_dir() or local.is_file()):
            raise DeriveError(f"{local}: only directories and regular files can be overlaid")
        if any(char in local.name for char in " \n\"'"):
            raise DeriveError(f"{local}: a quote, space or newline in a name")


def tree_commands(fs: Path, tree: Path) -> list[str]:
    """debugfs commands that overlay the regular files of ``tree`` (directories as needed)."""
    cmds: list[str] = []
    for local in sorted(tree.rglob("*")):
        path = "/" + local.relative_to(tree).as_posix()
        if local.is_dir():
            if not exists(fs, path):
                cmds.append(f"mkdir {path}")
        else:
            cmds += put_file(fs, local, path)
    return cmds


def stamped(os_release: str, version: str) -> str:
    """os-release with IMAGE_VERSION set to ``version``."""
    lines = [line for line in os_release.splitlines() if not line.startswith("IMAGE_VERSION=")]
    return "\n".join([*lines, f'IMAGE_VERSION="{version}"']) + "\n"


def cpu_seconds() -> float:
    """CPU time of this process and the tools it ran (gzip above all): the derive's wall time on
    an idle machine, where a loaded one only says how busy it was."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return round(sum(u.ru_utime + u.ru_stime for u in usage), 1)


def with_args(cmdline: str, args: list[str]) -> str:
    """``cmdline`` with each of ``args`` in place of the argument of the same name (the part
    before "="), or added at the end."""
    words = cmdline.split()
    for arg in args:
        name = arg.split("=", 1)[0]
        at = [i for i, word in enumerate(words) if word.split("=", 1)[0] == name]
        words = [word for i, word in enumerate(words) if i not in at[1:]]
        if at:
            words[at[0]] = arg
        else:
            words.append(arg)
    return " ".join(words)


def derive(source: Path, version: str, trees: list[Path], out_dir: Path,
           profile: str = "cpu", kernel_args: list[str] | None = None) -> Path:
    """Write version ``version`` derived from the build in ``source``; returns its update
    directory (what `spoke-hub os publish` takes)."""
    if not VERSION.fullmatch(version):
        raise DeriveError(f"--version {version!r} must start with a digit (letters, digits, "
                          ". + - after)")
    image, uki = source / f"spoke-{profile}.raw", source / f"spoke-{profile}.efi"
    for path in (image, uki):
        if not path.is_file():
            raise DeriveError(f"{path} is missing: derive from what image/build.sh wrote")
    for tree in trees:
        check_tree(tree)
    sections = pe_sections(uki)
    osrel = text_of(sections, ".osrel")
    was = re.search(r'^IMAGE_VERSION="?([^"\n]*)"?$', osrel, re.M)
    if was is None:
        raise DeriveError(f"{uki}: its os-release has no IMAGE_VERSION")
    old = was.group(1)
    if old == version:
        raise DeriveError(f"{source} already is version {version}: derive another version")
    cmdline = text_of(sections, ".cmdline")
    if f"root=PARTLABEL=spoke_{old}" not in cmdline.split():
        raise DeriveError(f"{uki}: its command line does not name root=PARTLABEL=spoke_{old}")

    slot = root_partition(image, old)
    out_dir.mkdir(parents=True, exist_ok=True)
    update = out_dir / f"spoke-{profile}_{version}.os"
    shutil.rmtree(update, ignore_errors=True)
    update.mkdir()
    steps: dict[str, float] = {}
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        steps[f"{name}_seconds"] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        fs = tmp / "root.raw"
        copy_sparse(image, *slot, fs)
        step("copy")
        release, stub, info = tmp / "os-release", tmp / "stub.efi", tmp / "build-info"
        release.write_text(stamped(read(fs, "/usr/lib/os-release"), version))
        if not exists(fs, STUB):
            raise DeriveError(f"the root file system has no {STUB}")
        debugfs(fs, f"dump {STUB} {stub}")
        info.write_text(read(fs, "/usr/share/spoke/build-info")
                        + f"derived=version {version} from {old} by image/derive.py at "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        cmds = put_file(fs, release, "/usr/lib/os-release")
        cmds += put_file(fs, info, "/usr/share/spoke/build-info")
        for tree in trees:
            cmds += tree_commands(fs, tree)
        debugfs(fs, *cmds, write=True)
        subprocess.run(["tune2fs", "-U", "random", "-L", f"spoke_{version}", str(fs)],
                       check=True, capture_output=True)
        check = subprocess.run(["e2fsck", "-fn", str(fs)], capture_output=True, text=True)
        if check.returncode != 0:
            raise DeriveError(f"the derived root file system does not check clean:\n"
                              f"{check.stdout[-2000:]}")
        step("edit")
        root_gz = update / f"spoke_{version}.root.raw.gz"
        with root_gz.open("wb") as out:
            subprocess.run(["gzip", "-1", "--no-name", "--stdout", str(fs)], stdout=out,
                           check=True)
        fs.unlink()
        step("root_gzip")

        kernel, initrd = out_dir / f"spoke-{profile}.vmlinuz", out_dir / f"spoke-{profile}.initrd"
        kernel.write_bytes(sections[".linux"])
        initrd.write_bytes(sections[".initrd"])
        new_cmdline = with_args(cmdline, [f"root=PARTLABEL=spoke_{version}",
                                          *(kernel_args or [])])
        new_uki = out_dir / f"spoke-{profile}.efi"
        new_uki.unlink(missing_ok=True)
        subprocess.run([*UKIFY, "build", f"--linux={kernel}", f"--initrd={initrd}",
                        f"--cmdline={new_cmdline}", f"--os-release=@{release}",
                        f"--uname={text_of(sections, '.uname')}", f"--stub={stub}",
                        f"--output={new_uki}"], check=True, capture_output=True)
        step("uki")
    os.link(new_uki, update / f"spoke_{version}.efi")
    (update / "manifest.json").write_text(
        json.dumps({"version": version, "architecture": "x86-64"}) + "\n")
    (update / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((update / name).read_bytes()).hexdigest()}  {name}\n"
        for name in (f"spoke_{version}.efi", f"spoke_{version}.root.raw.gz")))
    step("checksums")
    (out_dir / f"spoke-{profile}.build-info").write_text("".join(
        f"{key}={value}\n" for key, value in
        {"profile": profile, "version": version, "derived_from": old,
         "update_dir": update.resolve(), **steps,
         "derive_seconds": round(sum(steps.values()), 1), "cpu_seconds": cpu_seconds()}.items()))
    return update


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", type=Path, required=True,
                    help="the output directory of image/build.sh")
    ap.add_argument("--version", required=True)
    ap.add_argument("--extra-tree", type=Path, action="append", default=[])
    ap.add_argument("--kernel-arg", action="append", default=[],
                    help="an argument for the UKI's command line, replacing one of its name")
    ap.add_argument("--output-dir", type=Path, required=True)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        update = derive(args.source, args.version, args.extra_tree, args.output_dir,
                        args.profile, args.kernel_arg)
    except (DeriveError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        print(f"derive.py: {exc}{(': ' + str(detail).strip()[-500:]) if detail else ''}",
              file=sys.stderr)
        return 1
    print(f"derive.py: {update} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
