"""Prometheus metrics: names checked by the real promtool, registries kept apart."""

import shutil
import subprocess

import pytest

from appliance.config import HealthSection
from appliance.health import ActiveModel, DaemonFacts
from daemon.health.alerts import AlertEvaluator
from daemon.health.metrics import DaemonMetrics
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from tests.health.builders import filesystem, snapshot
from tests.health.fake_nvml import FakeGpu, FakeNvml


def busy_metrics() -> DaemonMetrics:
    """Every instrument with at least one sample, from a real psutil + fake GPU snapshot."""
    metrics = DaemonMetrics()
    fake = FakeNvml([FakeGpu(ecc_uncorrected=1)])
    sampler = Sampler(gpu=NvmlReader(fake))
    sampler.sample(DaemonFacts())
    fake.post_event(0, 0x8, data=48)  # nvmlEventTypeXidCriticalError
    snap = sampler.sample(DaemonFacts())
    metrics.update_from_snapshot(snap)
    metrics.apply_alert_events(AlertEvaluator(HealthSection()).evaluate(snap))
    metrics.queue_depth.labels("uplink").set(3)
    metrics.inference_latency_seconds.labels("onnxruntime").observe(0.042)
    metrics.inference_batch_size.labels("onnxruntime").observe(8)
    metrics.set_active_model(ActiveModel(name="vit-codebrim", version="3"))
    metrics.outbox_depth.set(2)
    metrics.hub_last_contact_timestamp_seconds.set(1_800_000_000)
    metrics.drop("upload_too_large")
    return metrics


def text(metrics: DaemonMetrics) -> str:
    return metrics.exposition()[0].decode()


def test_metric_names_pass_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; scripts/setup.sh)")
    body, _ = busy_metrics().exposition()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    problems = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not problems.strip(), problems


def test_exposition_has_the_prometheus_text_content_type() -> None:
    assert DaemonMetrics().exposition()[1].startswith("text/plain; version=")


def test_each_daemon_has_its_own_registry() -> None:
    first, second = DaemonMetrics(), DaemonMetrics()
    first.drop("queue_full")
    assert 'spoke_inputs_dropped_total{reason="queue_full"} 1.0' in text(first)
    assert "queue_full" not in text(second)


def test_every_drop_is_counted_by_reason() -> None:
    metrics = DaemonMetrics()
    for reason in ("undecodable", "undecodable", "too_many_pixels"):
        metrics.drop(reason)
    body = text(metrics)
    assert 'spoke_inputs_dropped_total{reason="undecodable"} 2.0' in body
    assert 'spoke_inputs_dropped_total{reason="too_many_pixels"} 1.0' in body


def test_active_model_info_has_one_series_for_the_current_model() -> None:
    metrics = DaemonMetrics()
    metrics.set_active_model(ActiveModel(name="vit", version="1"))
    metrics.set_active_model(ActiveModel(name="vit", version="2"))
    body = text(metrics)
    assert 'spoke_active_model_info{name="vit",version="2"} 1.0' in body
    assert 'version="1"' not in body


def test_unmounted_filesystem_disappears_from_metrics() -> None:
    metrics = DaemonMetrics()
    metrics.update_from_snapshot(snapshot(filesystems=[filesystem("/"), filesystem("/mnt/usb")]))
    metrics.update_from_snapshot(snapshot(filesystems=[filesystem("/")]))
    assert "/mnt/usb" not in text(metrics)


def test_gpu_events_accumulate_across_snapshots() -> None:
    metrics = DaemonMetrics()
    fake = FakeNvml()
    sampler = Sampler(gpu=NvmlReader(fake))
    for _ in range(2):
        sampler.gpu.read()
        fake.post_event(0, 0x8, data=79)  # nvmlEventTypeXidCriticalError
        metrics.update_from_snapshot(sampler.sample(DaemonFacts()))
    assert 'spoke_gpu_events_total{gpu="0",type="xid_critical_error"} 2.0' in text(metrics)


def test_gpu_state_is_exported_without_a_gpu() -> None:
    metrics = DaemonMetrics()
    metrics.update_from_snapshot(Sampler(gpu=NvmlReader(FakeNvml(gpus=[]))).sample(DaemonFacts()))
    assert 'spoke_gpu_nvml_state{state="absent"} 1.0' in text(metrics)


def test_cleared_alert_leaves_the_active_alert_gauge() -> None:
    metrics = DaemonMetrics()
    evaluator = AlertEvaluator(HealthSection())
    metrics.apply_alert_events(evaluator.evaluate(snapshot(filesystems=[filesystem("/", 0.95)])))
    assert 'spoke_health_alert_active{alert="disk_full",subject="/"} 1.0' in text(metrics)
    metrics.apply_alert_events(evaluator.evaluate(snapshot(filesystems=[filesystem("/", 0.5)])))
    assert 'alert="disk_full"' not in text(metrics)
