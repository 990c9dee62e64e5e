"""psutil collectors, run for real on this machine."""

import os
from collections import namedtuple

import psutil

from appliance.health import DaemonFacts, HealthSnapshot
from daemon.health.collectors import (
    HostCollector,
    fans_from_psutil,
    temperatures_from_psutil,
)
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from tests.health.fake_nvml import FakeNvml

# The shapes psutil documents for sensors_temperatures() and sensors_fans() entries.
Shwtemp = namedtuple("Shwtemp", "label current high critical")
Sfan = namedtuple("Sfan", "label current")


def test_cpu_usage_is_a_ratio_for_every_core() -> None:
    host, _, _ = HostCollector().collect()
    assert len(host.cpu.usage_ratio_per_core) == psutil.cpu_count()
    assert all(0.0 <= r <= 1.0 for r in host.cpu.usage_ratio_per_core)


def test_first_cpu_reading_is_the_average_since_boot_not_zero() -> None:
    host, _, _ = HostCollector().collect()
    assert sum(host.cpu.usage_ratio_per_core) > 0


def test_memory_matches_the_kernel_total() -> None:
    host, _, _ = HostCollector().collect()
    assert host.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < host.memory.available_bytes <= host.memory.total_bytes


def test_root_filesystem_usage_is_reported() -> None:
    host, _, _ = HostCollector().collect()
    mounts = {fs.mountpoint: fs for fs in host.filesystems}
    assert "/" in mounts
    assert 0.0 < mounts["/"].used_ratio < 1.0


def test_loop_devices_and_loopback_are_left_out() -> None:
    host, _, _ = HostCollector().collect()
    assert not any(d.device.startswith(("loop", "ram", "zram")) for d in host.disks)
    assert "lo" not in {n.interface for n in host.networks}


def test_uptime_is_time_since_boot() -> None:
    host, _, _ = HostCollector().collect()
    assert host.uptime_s > 0
    assert host.boot_time_s == psutil.boot_time()


def test_daemon_process_open_fds_are_counted() -> None:
    collector = HostCollector()
    before = collector.collect()[1].open_fds
    with open(os.devnull) as _:
        during = collector.collect()[1]
    assert during.open_fds == before + 1
    assert during.pid == os.getpid() and during.resident_memory_bytes > 0


def test_temperatures_keep_their_kernel_limits() -> None:
    readings = temperatures_from_psutil(
        {"coretemp": [Shwtemp("Package id 0", 48.0, 80.0, 100.0), Shwtemp("", 45.0, None, None)]}
    )
    assert [(t.label, t.celsius, t.critical_celsius) for t in readings] == [
        ("Package id 0", 48.0, 100.0),
        ("temp2", 45.0, None),
    ]


def test_fans_without_a_label_get_one() -> None:
    assert [(f.chip, f.label, f.rpm) for f in fans_from_psutil({"nct6775": [Sfan("", 1200)]})] == [
        ("nct6775", "fan1", 1200)
    ]


def test_every_kernel_temperature_is_reported_and_none_is_not_a_fault() -> None:
    host, _, faults = HostCollector().collect()
    sensors = psutil.sensors_temperatures()
    assert len(host.temperatures) == sum(len(entries) for entries in sensors.values())
    assert faults == []


def test_snapshot_round_trips_through_json() -> None:
    snap = Sampler(gpu=NvmlReader(FakeNvml())).sample(DaemonFacts(outbox_depth=3))
    assert HealthSnapshot.model_validate_json(snap.model_dump_json()) == snap
