"""Where a provisioning bundle may be: the command line, the state dir, /boot, a SPOKE stick."""

import os
from collections.abc import Iterator
from pathlib import Path

BUNDLE_SUFFIX = ".spoke"
VOLUME_LABEL = "SPOKE"


def _mount_points_of(device: Path, mounts: Path) -> Iterator[Path]:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return
    real = os.path.realpath(device)
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and os.path.realpath(fields[0]) == real:
            yield Path(fields[1].replace("\\040", " "))


def labelled_volumes(
    by_label: Path = Path("/dev/disk/by-label"), mounts: Path = Path("/proc/mounts")
) -> list[Path]:
    """Mount points of volumes labelled SPOKE (USB sticks a technician plugs in)."""
    device = by_label / VOLUME_LABEL
    return list(_mount_points_of(device, mounts)) if device.exists() else []


def _bundles_in(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == BUNDLE_SUFFIX and p.is_file())
    except OSError:
        return []


def candidates(explicit: Path | None, state_bundle: Path, boot_dir: Path) -> list[Path]:
    """Bundle files in the order they are tried."""
    if explicit is not None:
        return [explicit]
    found = [state_bundle] if state_bundle.is_file() else []
    found += _bundles_in(boot_dir)
    for volume in labelled_volumes():
        found += _bundles_in(volume)
    return found


def searched_places(state_bundle: Path, boot_dir: Path) -> str:
    return f"{state_bundle}, {boot_dir}/*{BUNDLE_SUFFIX}, a volume labelled {VOLUME_LABEL}"
