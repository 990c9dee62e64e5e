"""OS updates staged for real: systemd-sysupdate (systemd 254) with the transfer definitions the
image ships, against a GPT disk image with A/B root partitions made by systemd-repart, from a
source the appliance filled through the TUF client. Needs root (sysupdate attaches the image to
a loop device itself)."""

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from appliance.config import OsSection
from appliance.delivery import DesiredState
from appliance.osupdate import DesiredOs
from daemon.delivery.errors import DeliveryInterrupted, ModelRefused
from daemon.delivery.tufclient import TufClient
from daemon.osupdate.fetch import fetch_os
from daemon.osupdate.service import OsUpdateService
from daemon.osupdate.stage import SYSUPDATE, sysupdate_command
from daemon.osupdate.update import fetch_and_stage, source_dir
from provisioning import osupdates
from tests.delivery.simulator import SimulatedRepository
from tests.support.osrelease import make_release
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not SYSUPDATE.exists() or not shutil.which("systemd-repart")
    or not shutil.which("debugfs"),
    reason="needs root, systemd-sysupdate and systemd-repart (systemd >= 254) and debugfs",
)

SYSUPDATE_D = Path(__file__).parents[2] / "image/mkosi/mkosi.extra/usr/lib/sysupdate.d"
SLOT = 16 * 2**20
# 1 MiB stand-in root file system image; incompressible, so it travels at about that size.
ROOT_V2 = random.Random(2).randbytes(2**20)


def shipped(name: str, state: Path) -> str:
    """A transfer definition as the image ships it, reading the test's state directory."""
    text = (SYSUPDATE_D / name).read_text()
    assert "file:///var/lib/spoke/os/source" in text
    return text.replace("file:///var/lib/spoke/os/source", f"file://{source_dir(state)}")


def os_tree(path: Path, state: Path, conf: str) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "etc/os-release").write_text("ID=debian\nIMAGE_ID=spoke\nIMAGE_VERSION=1\n")
    (path / "usr/lib/sysupdate.d").mkdir(parents=True)
    (path / "usr/lib/sysupdate.d" / conf).write_text(shipped(conf, state))
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "var-lib-spoke"


@pytest.fixture
def disk(tmp_path: Path, state: Path) -> Path:
    """Slot A holds version 1 (an ext4 root with the shipped 50-root.conf), slot B is empty."""
    tree = os_tree(tmp_path / "tree", state, "50-root.conf")
    repart = tmp_path / "repart.d"
    repart.mkdir()
    (repart / "20-root-a.conf").write_text(
        f"[Partition]\nType=root\nLabel=spoke_1\nFormat=ext4\nCopyFiles={tree}:/\n"
        f"SizeMinBytes={SLOT}\nSizeMaxBytes={SLOT}\n")
    (repart / "21-root-b.conf").write_text(
        f"[Partition]\nType=root\nLabel=_empty\nSizeMinBytes={SLOT}\nSizeMaxBytes={SLOT}\n")
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(3 * SLOT)
    subprocess.run(["systemd-repart", "--offline=yes", "--empty=require", "--dry-run=no",
                    f"--definitions={repart}", str(disk)], check=True, capture_output=True)
    return disk


def partitions(disk: Path) -> list[dict[str, object]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)
    return list(table["partitiontable"]["partitions"])


def read_partition(disk: Path, part: dict[str, object], length: int | None = None) -> bytes:
    with disk.open("rb") as f:
        f.seek(int(str(part["start"])) * 512)
        return f.read(length if length is not None else int(str(part["size"])) * 512)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedRepository:
    sim = SimulatedRepository()
    osupdates.publish(sim.repo, make_release(tmp_path / "v2", "2", root=ROOT_V2))
    return sim


def client(sim: SimulatedRepository, tmp_path: Path) -> TufClient:
    return TufClient(tmp_path / "tuf", sim.root, sim.base, sim)


def rel_of(sim: SimulatedRepository, target: str) -> str:
    info = sim.repo.targets().signed.targets[target]
    dirname, _, base = target.rpartition("/")
    return f"targets/{dirname}/{info.hashes['sha256']}.{base}"


V2 = DesiredOs(version="2", target="os/2/manifest.json")


def update(sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path) -> None:
    fetch_and_stage(client(sim, tmp_path), sim, V2, state, time.monotonic() + 120, image=disk,
                    architecture="x86-64")


def files_of(disk: Path, part: dict[str, object], out: Path) -> dict[str, str]:
    """The running slot's file system as {path: sha256}, read with debugfs (no mount)."""
    image = out.with_suffix(".img")
    image.write_bytes(read_partition(disk, part))
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", str(image)], check=True,
                   capture_output=True)
    return {str(p.relative_to(out)): digest(p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_inactive_slot_gets_the_new_version_and_the_running_one_is_untouched(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    a, _ = partitions(disk)
    running = files_of(disk, a, tmp_path / "before")
    update(sim, tmp_path, state, disk)
    a2, b2 = partitions(disk)
    assert (a2["name"], b2["name"]) == ("spoke_1", "spoke_2")
    assert (a2["start"], a2["size"]) == (a["start"], a["size"])
    assert read_partition(disk, b2, len(ROOT_V2)) == ROOT_V2
    # --image mode fscks and mounts slot A read-write to read its os-release and transfer
    # definitions (its superblock's mount count moves); on a running box it is simply /.
    # What must not move is the running version's file system: every file, byte for byte.
    assert files_of(disk, a2, tmp_path / "after") == running
    assert "etc/os-release" in running
    # The downloaded root image is gone from the data partition once it is in its slot.
    assert not source_dir(state).exists()


def test_the_next_version_is_fetched_after_one_was_staged(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    """Found by the QEMU test: version 3's manifest was "resumed" from version 2's."""
    update(sim, tmp_path, state, disk)
    osupdates.publish(sim.repo, make_release(tmp_path / "v3", "3", root=ROOT_V2[::-1]))
    v3 = DesiredOs(version="3", target="os/3/manifest.json")
    manifest = fetch_os(client(sim, tmp_path), sim, v3, state / "os" / "partial",
                        source_dir(state), time.monotonic() + 120, "x86-64")
    assert manifest.version == "3"
    assert gzip.decompress((source_dir(state) / "spoke_3.root.raw.gz").read_bytes()) == \
        ROOT_V2[::-1]
    assert sorted(p.name for p in (state / "os" / "partial").iterdir()) == [
        "spoke_3.manifest.json.partial"]


def test_a_partial_download_of_a_version_no_longer_desired_is_dropped(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    partial = state / "os" / "partial"
    partial.mkdir(parents=True)
    (partial / "spoke_1.5.root.raw.gz.partial").write_bytes(b"half of a version given up")
    update(sim, tmp_path, state, disk)
    assert not (partial / "spoke_1.5.root.raw.gz.partial").exists()
    assert partitions(disk)[1]["name"] == "spoke_2"


def tampered(sim: SimulatedRepository) -> None:
    """Serve version 2's compressed root image with one byte changed (same length)."""
    rel = rel_of(sim, "os/2/spoke_2.root.raw.gz")
    good = sim.files()[rel]
    sim.served[rel] = good[:-1] + bytes([good[-1] ^ 1])


def test_a_tampered_target_is_refused_and_nothing_is_staged(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    before = digest(disk.read_bytes())
    tampered(sim)
    with pytest.raises(ModelRefused) as err:
        update(sim, tmp_path, state, disk)
    assert err.value.code == "hash-mismatch"
    assert digest(disk.read_bytes()) == before
    assert not source_dir(state).exists()


def test_a_truncated_download_stages_nothing_then_resumes(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    before = digest(disk.read_bytes())
    rel = rel_of(sim, "os/2/spoke_2.root.raw.gz")
    half = len(sim.files()[rel]) // 2
    sim.cut_after[rel] = half
    with pytest.raises(DeliveryInterrupted):
        update(sim, tmp_path, state, disk)
    assert digest(disk.read_bytes()) == before and not source_dir(state).exists()
    del sim.cut_after[rel]
    update(sim, tmp_path, state, disk)
    assert (rel, half) in sim.requests  # the second try asked for the rest only
    assert read_partition(disk, partitions(disk)[1], len(ROOT_V2)) == ROOT_V2


def test_a_corrupt_file_left_in_the_source_is_downloaded_again_not_refused(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    """What a power cut left in the source is only reused when it is exactly the signed bytes."""
    fetch_os(client(sim, tmp_path), sim, V2, state / "os" / "partial", source_dir(state),
             time.monotonic() + 120, "x86-64")
    kept = source_dir(state) / "spoke_2.root.raw.gz"
    good = kept.read_bytes()
    kept.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    sim.requests.clear()
    update(sim, tmp_path, state, disk)
    assert [rel for rel, _ in sim.requests if rel.startswith("targets/")] == [
        rel_of(sim, "os/2/spoke_2.root.raw.gz")]
    assert read_partition(disk, partitions(disk)[1], len(ROOT_V2)) == ROOT_V2


def test_a_root_image_that_inflates_past_its_slot_fails_and_writes_nothing_outside_it(
        tmp_path: Path, state: Path, disk: Path):
    """The compressed image is signed, but what it inflates to is only bounded by the slot:
    systemd-pull stops at the partition's size."""
    sim = SimulatedRepository()
    osupdates.publish(sim.repo, make_release(tmp_path / "bomb", "2", root=bytes(SLOT + 2**20)))
    a, b = partitions(disk)
    running = files_of(disk, a, tmp_path / "before")
    end_of_b = (int(str(b["start"])) + int(str(b["size"]))) * 512
    with disk.open("rb") as f:
        f.seek(end_of_b)
        after_b = f.read()
    with pytest.raises(ModelRefused) as err:
        update(sim, tmp_path, state, disk)
    assert err.value.code == "stage-failed"
    a2, b2 = partitions(disk)
    assert (a2["name"], b2["name"]) == ("spoke_1", "_empty")
    assert files_of(disk, a2, tmp_path / "after") == running
    with disk.open("rb") as f:
        f.seek(end_of_b)
        assert f.read() == after_b


def test_a_version_for_another_architecture_is_refused_and_nothing_is_staged(
        tmp_path: Path, state: Path, disk: Path):
    sim = SimulatedRepository()
    osupdates.publish(sim.repo, make_release(tmp_path / "arm", "2", arch="arm64"))
    before = digest(disk.read_bytes())
    with pytest.raises(ModelRefused) as err:
        update(sim, tmp_path, state, disk)
    assert err.value.code == "wrong-architecture"
    assert digest(disk.read_bytes()) == before and not source_dir(state).exists()


def test_the_uki_lands_on_the_esp_with_boot_counting(
        sim: SimulatedRepository, tmp_path: Path, state: Path):
    root = os_tree(tmp_path / "root", state, "60-uki.conf")
    linux = root / "efi/EFI/Linux"
    linux.mkdir(parents=True)
    (linux / "spoke_1.efi").write_bytes(b"the running UKI")
    # The ESP here is a directory, not vfat (no vfat module in CI's container).
    fetch_and_stage(client(sim, tmp_path), sim, V2, state, time.monotonic() + 120, root=root,
                    architecture="x86-64",
                    env={"SYSTEMD_RELAX_ESP_CHECKS": "1", "SYSTEMD_ESP_PATH": "/efi"})
    uki = (tmp_path / "v2" / "spoke_2.efi").read_bytes()
    assert (linux / "spoke_2+3-0.efi").read_bytes() == uki
    assert (linux / "spoke_1.efi").read_bytes() == b"the running UKI"


# --- the reconciler: desired version in, staged slot, reboot when allowed, outcome reported ---


class Box:
    """What the OS reconciler sees of the rest of the appliance."""

    def __init__(self) -> None:
        self.finetune, self.queued = False, 0
        self.hour = 3
        self.booted_at = 1000.0  # wall-clock start of the boot the service runs in
        self.reboots = 0
        self.events: list[tuple[str, dict[str, object]]] = []

    def service(self, state: Path, disk: Path, running: tuple[str, str]) -> OsUpdateService:
        return OsUpdateService(
            state, OsSection(reboot_window="02:00-05:00"),
            emit=lambda kind, data: self.events.append((kind, data)),
            busy=lambda: (self.finetune, self.queued),
            running=lambda: running,
            reboot=self.reboot,
            stage_into={"image": disk, "architecture": "x86-64"},
            now=lambda: dt.datetime(2026, 12, 2, self.hour, 30),
            booted_at=lambda: self.booted_at,
        )

    def reboot(self) -> None:  # stands in for `systemctl reboot`
        self.reboots += 1


def desire(version: str) -> bytes:
    return DesiredState(os=DesiredOs(version=version, target=f"os/{version}/manifest.json")
                        ).model_dump_json().encode()


async def test_the_reconciler_stages_the_desired_version_and_waits_for_a_quiet_window(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    box = Box()
    box.hour, box.queued = 12, 3
    svc = box.service(state, disk, ("1", "spoke_1"))
    svc.attach(client(sim, tmp_path))
    await svc.on_desired(desire("2"))
    await svc.reconcile()
    assert svc.reported()["staged"] == "2"
    assert partitions(disk)[1]["name"] == "spoke_2"
    assert box.reboots == 0 and "outside the reboot window" in str(svc.reported()["waiting"])
    box.hour = 3
    await svc.reconcile()
    assert box.reboots == 0 and "uplink queue holds 3" in str(svc.reported()["waiting"])
    box.queued = 0
    await svc.reconcile()
    assert box.reboots == 1
    assert [k for k, _ in box.events] == ["os_staged", "os_rebooting"]


async def test_booting_the_new_version_reports_it_committed(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    box = Box()
    svc = box.service(state, disk, ("1", "spoke_1"))
    svc.attach(client(sim, tmp_path))
    await svc.on_desired(desire("2"))
    await svc.reconcile()
    health = state / "os" / "health.json"
    health.write_text(json.dumps({"ok": True, "reason": "healthy", "checked_at": 900.0}))
    box.booted_at = 1000.0
    after = box.service(state, disk, ("2", "spoke_2"))
    after.settle_boot()
    # Running 2, but its health gate has not passed in THIS boot (the pass is from before it).
    reported = after.reported()
    assert (reported["version"], reported["state"]) == ("2", "probation")
    assert reported["last_update"]["outcome"] == "rebooting"  # type: ignore[index]
    health.write_text(json.dumps({"ok": True, "reason": "healthy", "checked_at": 1030.0}))
    await after.reconcile()
    reported = after.reported()
    assert (reported["version"], reported["slot"], reported["state"]) == ("2", "spoke_2",
                                                                          "committed")
    assert reported["last_update"]["outcome"] == "committed"  # type: ignore[index]
    assert [k for k, _ in box.events] == ["os_staged", "os_rebooting", "os_committed"]


async def test_a_rollback_is_reported_with_its_reason_and_not_retried(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    box = Box()
    svc = box.service(state, disk, ("1", "spoke_1"))
    svc.attach(client(sim, tmp_path))
    await svc.on_desired(desire("2"))
    await svc.reconcile()
    (state / "os" / "health.json").write_text(
        json.dumps({"ok": False, "reason": "hub unreachable for 300 s",
                    "checked_at": time.time()}))
    back = box.service(state, disk, ("1", "spoke_1"))  # systemd-boot fell back to slot A
    back.settle_boot()
    back.attach(client(sim, tmp_path))
    reported = back.reported()
    assert reported["version"] == "1"
    assert reported["last_error"] == {
        "name": "spoke-os", "version": "2", "code": "rolled-back",
        "reason": "rolled back: spoke-health failed: hub unreachable for 300 s"}
    await back.on_desired(desire("2"))
    await back.reconcile()
    assert box.reboots == 1  # the first boot attempt only: 2 is not staged or booted again
    assert back.reported()["staged"] is None


async def test_power_lost_while_rebooting_until_the_tries_ran_out_is_a_rollback_of_its_own(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    """Power cut during every boot of the new version (its gate never ran): systemd-boot falls
    back, and a failed verdict from before the reboot is not blamed on the new version."""
    health = state / "os" / "health.json"
    health.parent.mkdir(parents=True)
    health.write_text(json.dumps({"ok": False, "reason": "hub unreachable for 999 s",
                                  "checked_at": time.time() - 3600}))  # an old bad hour
    box = Box()
    svc = box.service(state, disk, ("1", "spoke_1"))
    svc.attach(client(sim, tmp_path))
    await svc.on_desired(desire("2"))
    await svc.reconcile()
    assert box.reboots == 1
    back = box.service(state, disk, ("1", "spoke_1"))
    back.settle_boot()
    assert back.reported()["last_update"]["reason"] == (  # type: ignore[index]
        "rolled back: spoke-health failed: the new slot never completed a boot")


# --- the unprivileged daemon asks the root staging unit (spoke-os-stage.service) ---

OS_STAGE = Path(__file__).parents[2] / "image/mkosi/mkosi.extra/usr/lib/spoke/os-stage"


def run_os_stage(state: Path, disk: Path) -> subprocess.CompletedProcess[str]:
    """What spoke-os-stage.path starts when the request file appears."""
    return subprocess.run([str(OS_STAGE)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"SPOKE_STATE_DIR": str(state),
                                            "SPOKE_SYSUPDATE_IMAGE": str(disk)})


def test_an_unprivileged_daemon_stages_through_the_root_unit(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    errors: list[BaseException] = []

    def daemon_side() -> None:
        try:
            fetch_and_stage(client(sim, tmp_path), sim, V2, state, time.monotonic() + 120,
                            architecture="x86-64", privileged=False)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=daemon_side)
    worker.start()
    request = state / "os" / "stage-request"
    wait_for(lambda: request.exists() or not worker.is_alive(), 60,
             "the daemon side's stage request")
    assert request.read_text() == "2\n"
    assert run_os_stage(state, disk).returncode == 0
    worker.join(60)
    assert not errors, errors
    assert partitions(disk)[1]["name"] == "spoke_2"
    assert read_partition(disk, partitions(disk)[1], len(ROOT_V2)) == ROOT_V2
    assert not request.exists() and not (state / "os" / "stage-result").exists()


def test_the_root_unit_refuses_a_request_that_is_not_a_version_and_echoes_nothing(
        tmp_path: Path, state: Path, disk: Path):
    before = digest(disk.read_bytes())
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash\n")
    (state / "os").mkdir(parents=True)
    (state / "os" / "stage-request").symlink_to(secret)
    assert run_os_stage(state, disk).returncode == 1
    answer = (state / "os" / "stage-result").read_text()
    assert answer == "failed: the request is not a version\n" and "hash" not in answer
    assert digest(disk.read_bytes()) == before


async def test_a_refusal_is_recorded_and_told_once_while_the_retries_fail_the_same_way(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    box = Box()
    before = digest(disk.read_bytes())
    tampered(sim)
    svc = box.service(state, disk, ("1", "spoke_1"))
    svc.attach(client(sim, tmp_path))
    await svc.on_desired(desire("2"))
    await svc.reconcile()
    await svc.reconcile()
    assert [k for k, _ in box.events] == ["os_refused"]
    error = svc.reported()["last_error"]
    assert isinstance(error, dict) and error["code"] == "hash-mismatch"
    assert svc.reported()["staged"] is None and box.reboots == 0
    assert digest(disk.read_bytes()) == before


def test_a_full_data_partition_during_the_download_stages_nothing(
        sim: SimulatedRepository, tmp_path: Path, state: Path, disk: Path):
    before = digest(disk.read_bytes())
    state.mkdir()
    # A data partition with room for the manifest and the UKI, not for the root image.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(state)], check=True)
    try:
        with pytest.raises(DeliveryInterrupted) as err:
            update(sim, tmp_path, state, disk)
        assert err.value.code == "disk-full"
        assert not source_dir(state).exists()
        assert not (state / "os" / "partial" / "spoke_2.root.raw.gz.partial").exists()
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert digest(disk.read_bytes()) == before


def test_power_loss_while_staging_keeps_the_running_slot_and_the_retry_completes(
        tmp_path: Path, state: Path, disk: Path, caplog: pytest.LogCaptureFixture):
    """sysupdate and its download helper are killed (SIGKILL, the whole group) once bytes
    reach slot B; wherever that lands, slot A keeps its files and staging again completes."""
    # Version 2's root: a real 12 MiB ext4 (a later sysupdate --image mounts the newest slot).
    tree = os_tree(tmp_path / "tree-v2", state, "50-root.conf")
    (tree / "etc/os-release").write_text("ID=debian\nIMAGE_ID=spoke\nIMAGE_VERSION=2\n")
    (tree / "payload").write_bytes(os.urandom(8 * 2**20))  # so the write takes a moment
    image = tmp_path / "root-v2.raw"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "12M"], check=True)
    sim = SimulatedRepository()
    osupdates.publish(sim.repo, make_release(tmp_path / "big", "2", root=image.read_bytes()))
    a, b = partitions(disk)
    running = files_of(disk, a, tmp_path / "before")
    fetch_os(client(sim, tmp_path), sim, V2, state / "os" / "partial", source_dir(state),
             time.monotonic() + 120, "x86-64")
    proc = subprocess.Popen(sysupdate_command("2", image=disk), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not any(read_partition(disk, b, 2**20)):
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    a2, _ = partitions(disk)
    assert a2["name"] == "spoke_1"
    assert files_of(disk, a2, tmp_path / "after-kill") == running
    # The box comes back and the reconciler tries again: the verified files the source still
    # holds are staged without a second download.
    sim.requests.clear()
    with caplog.at_level("INFO", logger="daemon.osupdate.fetch"):
        update(sim, tmp_path, state, disk)
    assert not [rel for rel, _ in sim.requests if rel.startswith("targets/")]
    assert "not downloading it again" in caplog.text
    a3, b3 = partitions(disk)
    assert (a3["name"], b3["name"]) == ("spoke_1", "spoke_2")
    # By files, not bytes: had the kill come after the write, the retry's --image mount of the
    # newest slot (now B) moved B's superblock mount count.
    assert files_of(disk, b3, tmp_path / "staged") == {
        str(f.relative_to(tree)): digest(f.read_bytes()) for f in tree.rglob("*") if f.is_file()}
    assert files_of(disk, a3, tmp_path / "after-retry") == running
