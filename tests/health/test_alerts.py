"""The alert evaluator: one test per rule, plus hysteresis. Pure: hand-built snapshots."""

from typing import Any

import pytest
from pydantic import ValidationError

from appliance.config import HealthSection
from appliance.health import (
    ActiveModel,
    AlertEvent,
    DaemonFacts,
    GpuSection,
    HealthSnapshot,
)
from daemon.health.alerts import AlertEvaluator
from tests.health.builders import NOW, filesystem, gpu, snapshot

MODEL = ActiveModel(name="vit-codebrim", version="3")
HEALTHY_FACTS = DaemonFacts(active_model=MODEL, last_hub_contact_s=NOW - 5)


def healthy(**kwargs: Any) -> HealthSnapshot:
    kwargs.setdefault("daemon", HEALTHY_FACTS)
    return snapshot(**kwargs)


def transitions(events: list[AlertEvent], alert: str) -> list[tuple[str, str]]:
    return [(e.subject, e.state) for e in events if e.alert == alert]


@pytest.fixture
def evaluator() -> AlertEvaluator:
    return AlertEvaluator(HealthSection())


def test_a_healthy_appliance_raises_nothing(evaluator: AlertEvaluator) -> None:
    assert evaluator.evaluate(healthy()) == []


def test_disk_above_90_percent_raises_once_and_clears_below_85(evaluator: AlertEvaluator) -> None:
    seen = []
    for ratio in (0.80, 0.91, 0.95, 0.87, 0.84):
        seen += transitions(
            evaluator.evaluate(healthy(filesystems=[filesystem("/var", ratio)])), "disk_full"
        )
    assert seen == [("/var", "raised"), ("/var", "cleared")]


def test_disk_alert_of_an_unmounted_filesystem_is_cleared(evaluator: AlertEvaluator) -> None:
    evaluator.evaluate(healthy(filesystems=[filesystem("/"), filesystem("/media/usb", 0.99)]))
    events = evaluator.evaluate(healthy(filesystems=[filesystem("/")]))
    assert transitions(events, "disk_full") == [("/media/usb", "cleared")]


def test_disk_alert_holds_when_the_filesystem_list_failed(evaluator: AlertEvaluator) -> None:
    evaluator.evaluate(healthy(filesystems=[filesystem("/data", 0.99)]))
    events = evaluator.evaluate(healthy(filesystems=[], faults=["filesystems: I/O error"]))
    assert transitions(events, "disk_full") == []


def test_gpu_temperature_above_its_slowdown_limit_raises(evaluator: AlertEvaluator) -> None:
    hot = GpuSection(status="ok", gpus=[gpu(temperature_celsius=91.0)])
    events = evaluator.evaluate(healthy(gpu_section=hot))
    assert transitions(events, "gpu_temperature") == [("gpu0", "raised")]
    assert events[0].threshold == 90.0


def test_gpu_temperature_clears_only_below_limit_minus_hysteresis(
    evaluator: AlertEvaluator,
) -> None:
    seen = []
    for temp in (91.0, 88.0, 86.0, 84.0):
        section = GpuSection(status="ok", gpus=[gpu(temperature_celsius=temp)])
        seen += transitions(evaluator.evaluate(healthy(gpu_section=section)), "gpu_temperature")
    assert seen == [("gpu0", "raised"), ("gpu0", "cleared")]


def test_gpu_temperature_uses_the_configured_limit_when_set() -> None:
    evaluator = AlertEvaluator(HealthSection(gpu_temperature_limit_celsius=70.0))
    section = GpuSection(status="ok", gpus=[gpu(temperature_celsius=72.0)])
    assert transitions(evaluator.evaluate(healthy(gpu_section=section)), "gpu_temperature") == [
        ("gpu0", "raised")
    ]


def test_gpu_throttling_raises_for_thermal_slowdown(evaluator: AlertEvaluator) -> None:
    section = GpuSection(status="ok", gpus=[gpu(throttle_reasons=["hw_thermal_slowdown"])])
    events = evaluator.evaluate(healthy(gpu_section=section))
    assert transitions(events, "gpu_throttling") == [("gpu0", "raised")]


def test_gpu_idle_clocks_are_not_throttling(evaluator: AlertEvaluator) -> None:
    section = GpuSection(status="ok", gpus=[gpu(throttle_reasons=["gpu_idle"])])
    assert transitions(evaluator.evaluate(healthy(gpu_section=section)), "gpu_throttling") == []


def test_gpu_throttling_clears_after_three_clean_samples(evaluator: AlertEvaluator) -> None:
    throttled = GpuSection(status="ok", gpus=[gpu(throttle_reasons=["sw_thermal_slowdown"])])
    clean = GpuSection(status="ok", gpus=[gpu()])
    seen = []
    for section in (throttled, clean, clean, throttled, clean, clean, clean):
        seen += transitions(evaluator.evaluate(healthy(gpu_section=section)), "gpu_throttling")
    assert seen == [("gpu0", "raised"), ("gpu0", "cleared")]


def test_uncorrected_ecc_errors_raise(evaluator: AlertEvaluator) -> None:
    section = GpuSection(status="ok", gpus=[gpu(ecc_uncorrected_errors=2)])
    events = evaluator.evaluate(healthy(gpu_section=section))
    assert transitions(events, "gpu_ecc_errors") == [("gpu0", "raised")]


def test_memory_pressure_raises_below_10_percent_and_clears_above_15(
    evaluator: AlertEvaluator,
) -> None:
    seen = []
    for ratio in (0.30, 0.08, 0.12, 0.09, 0.16):
        seen += transitions(
            evaluator.evaluate(healthy(memory_available_ratio=ratio)), "memory_pressure"
        )
    assert seen == [("memory", "raised"), ("memory", "cleared")]


def test_nvml_lost_raises_on_fault_and_clears_when_nvml_is_back(
    evaluator: AlertEvaluator,
) -> None:
    lost = GpuSection(status="fault", message="NVML lost: GPU is lost")
    first = evaluator.evaluate(healthy(gpu_section=lost))
    back = evaluator.evaluate(healthy())
    assert transitions(first, "nvml_lost") + transitions(back, "nvml_lost") == [
        ("nvml", "raised"),
        ("nvml", "cleared"),
    ]


def test_no_gpu_is_not_an_alert(evaluator: AlertEvaluator) -> None:
    for section in (
        GpuSection(status="absent", message="no NVIDIA GPU"),
        GpuSection(status="unavailable", message="NVML not available: Driver Not Loaded"),
    ):
        assert evaluator.evaluate(healthy(gpu_section=section)) == []


def test_gpu_alerts_hold_while_nvml_is_lost(evaluator: AlertEvaluator) -> None:
    failing = GpuSection(status="ok", gpus=[gpu(ecc_uncorrected_errors=1)])
    evaluator.evaluate(healthy(gpu_section=failing))
    events = evaluator.evaluate(healthy(gpu_section=GpuSection(status="fault", message="lost")))
    assert transitions(events, "gpu_ecc_errors") == []


def test_no_active_model_raises_and_clears_when_one_is_activated(
    evaluator: AlertEvaluator,
) -> None:
    none = DaemonFacts(active_model=None, last_hub_contact_s=NOW - 5)
    seen = transitions(evaluator.evaluate(snapshot(daemon=none)), "no_active_model")
    seen += transitions(evaluator.evaluate(healthy()), "no_active_model")
    assert seen == [("model", "raised"), ("model", "cleared")]


def test_hub_unreachable_for_15_minutes_raises_and_clears_on_contact(
    evaluator: AlertEvaluator,
) -> None:
    silent = DaemonFacts(active_model=MODEL, last_hub_contact_s=NOW - 1000)
    seen = transitions(evaluator.evaluate(snapshot(daemon=silent)), "hub_unreachable")
    seen += transitions(evaluator.evaluate(healthy()), "hub_unreachable")
    assert seen == [("hub", "raised"), ("hub", "cleared")]


def test_hub_never_reached_counts_from_daemon_start(evaluator: AlertEvaluator) -> None:
    never = DaemonFacts(active_model=MODEL, last_hub_contact_s=None)
    # the builder's daemon started 60 s before NOW; 20 minutes later it is an alert
    events = evaluator.evaluate(snapshot(daemon=never, taken_at_s=NOW + 1200))
    assert transitions(events, "hub_unreachable") == [("hub", "raised")]


def test_a_value_oscillating_around_the_threshold_does_not_flap(
    evaluator: AlertEvaluator,
) -> None:
    events = []
    for i in range(40):
        ratio = 0.905 if i % 2 else 0.895
        events += evaluator.evaluate(healthy(filesystems=[filesystem("/", ratio)]))
    assert [(e.alert, e.state) for e in events] == [("disk_full", "raised")]


def test_events_are_json_for_the_hub(evaluator: AlertEvaluator) -> None:
    event = evaluator.evaluate(healthy(filesystems=[filesystem("/", 0.97)]))[0]
    assert AlertEvent.model_validate_json(event.model_dump_json()) == event


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        HealthSection.model_validate({"disk_percent": 90})


def test_config_refuses_a_clear_threshold_above_its_raise_threshold() -> None:
    with pytest.raises(ValidationError, match="disk_used_clear_ratio"):
        HealthSection(disk_used_raise_ratio=0.8, disk_used_clear_ratio=0.9)
