"""A pure alert evaluator with hysteresis: snapshots in, raise/clear transitions out.

Each rule looks at one snapshot and says, per subject (a mount, a GPU, the daemon), whether the
raise condition or the clear condition holds. The two conditions are separated by a band
(disk raises at 90 % but clears only below 85 %), and boolean conditions such as throttling
clear only after several clean samples, so a value wobbling around a threshold yields one
raise, not a stream of raise/clear pairs. No clocks, no I/O: time comes from the snapshot.

Which alerts are raised outlives the process (``load_active``/``save_active``): otherwise a
restart raises again every alert that is still active, and the hub sees a second "raised"
with no "cleared" between (found by the hub-killed and power-cut fault scenarios).
"""

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.config import HealthSection
from appliance.fsutil import atomic_write
from appliance.health import AlertEvent, HealthSnapshot, Severity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """What one rule sees for one subject in one snapshot; neither flag set means "hold"."""

    subject: str
    raise_now: bool
    clear_now: bool
    message: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Rule:
    """``observe`` returns the observations and whether they cover every subject that exists
    (then an active subject that vanished, such as an unmounted disk, is cleared)."""

    alert: str
    severity: Severity
    observe: Callable[[HealthSnapshot, HealthSection], tuple[list[Observation], bool]]
    clear_after: Callable[[HealthSection], int] = lambda _cfg: 1


@dataclass
class _State:
    clean_samples: int = 0


class AlertEvaluator:
    """Remembers which alerts are raised; ``evaluate`` returns only the transitions."""

    def __init__(self, config: HealthSection, active: Iterable[tuple[str, str]] = ()) -> None:
        """``active``: the alerts raised before a restart (their clean-sample counts restart)."""
        self.config = config
        self._active: dict[tuple[str, str], _State] = {key: _State() for key in active}

    @property
    def active(self) -> list[tuple[str, str]]:
        """The raised alerts as (alert, subject) pairs."""
        return sorted(self._active)

    def evaluate(self, snapshot: HealthSnapshot) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for rule in RULES:
            events.extend(self._apply(rule, snapshot))
        return events

    def _apply(self, rule: Rule, snapshot: HealthSnapshot) -> Iterator[AlertEvent]:
        observations, complete = rule.observe(snapshot, self.config)
        seen = set()
        for obs in observations:
            key = (rule.alert, obs.subject)
            seen.add(obs.subject)
            state = self._active.get(key)
            if state is None:
                if obs.raise_now:
                    self._active[key] = _State()
                    yield self._event(rule, obs, "raised", snapshot)
            elif obs.clear_now:
                state.clean_samples += 1
                if state.clean_samples >= rule.clear_after(self.config):
                    del self._active[key]
                    yield self._event(rule, obs, "cleared", snapshot)
            else:
                state.clean_samples = 0
        if complete:
            for alert, subject in [k for k in self._active if k[0] == rule.alert]:
                if subject not in seen:
                    del self._active[(alert, subject)]
                    gone = Observation(subject, False, True, f"{subject} is no longer present")
                    yield self._event(rule, gone, "cleared", snapshot)

    @staticmethod
    def _event(
        rule: Rule,
        obs: Observation,
        state: Literal["raised", "cleared"],
        snapshot: HealthSnapshot,
    ) -> AlertEvent:
        return AlertEvent(
            alert=rule.alert,
            subject=obs.subject,
            state=state,
            severity=rule.severity,
            message=obs.message,
            value=obs.value,
            threshold=obs.threshold,
            at_s=snapshot.taken_at_s,
        )


def load_active(path: Path) -> list[tuple[str, str]]:
    """The raised (alert, subject) pairs saved by ``save_active``; none if missing or unreadable."""
    try:
        pairs = json.loads(path.read_text())
        return [(str(a), str(s)) for a, s in pairs]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        log.warning("alert state unreadable; starting with none raised",
                    extra={"path": str(path), "error": str(exc)})
        return []


def save_active(path: Path, active: list[tuple[str, str]]) -> None:
    atomic_write(path, json.dumps(active))


def _disk_full(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    obs = [
        Observation(
            subject=fs.mountpoint,
            raise_now=fs.used_ratio >= cfg.disk_used_raise_ratio,
            clear_now=fs.used_ratio < cfg.disk_used_clear_ratio,
            message=f"{fs.mountpoint} is {fs.used_ratio:.0%} full",
            value=fs.used_ratio,
            threshold=cfg.disk_used_raise_ratio,
        )
        for fs in snap.host.filesystems
    ]
    return obs, not any(f.startswith("filesystems:") for f in snap.faults)


def _memory_pressure(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    ratio = snap.host.memory.available_ratio
    return [
        Observation(
            subject="memory",
            raise_now=ratio <= cfg.memory_available_raise_ratio,
            clear_now=ratio >= cfg.memory_available_clear_ratio,
            message=f"{ratio:.0%} of memory available",
            value=ratio,
            threshold=cfg.memory_available_raise_ratio,
        )
    ], True


def _gpus_complete(snap: HealthSnapshot) -> bool:
    """Only a working NVML gives a full list; during a fault GPU alerts hold their state."""
    return snap.gpu.status != "fault"


def _gpu_temperature(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    obs = []
    for gpu in snap.gpu.gpus:
        if gpu.temperature_celsius is None:
            continue
        limit = cfg.gpu_temperature_limit_celsius
        if limit is None:
            limit = gpu.temperature_slowdown_celsius
        if limit is None:
            limit = cfg.gpu_temperature_default_limit_celsius
        temp = gpu.temperature_celsius
        obs.append(
            Observation(
                subject=f"gpu{gpu.index}",
                raise_now=temp >= limit,
                clear_now=temp <= limit - cfg.gpu_temperature_hysteresis_celsius,
                message=f"GPU {gpu.index} ({gpu.name}) at {temp:.0f} °C, limit {limit:.0f} °C",
                value=temp,
                threshold=limit,
            )
        )
    return obs, _gpus_complete(snap)


def _gpu_throttling(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    obs = []
    for gpu in snap.gpu.gpus:
        reasons = [r for r in gpu.throttle_reasons if r in cfg.gpu_throttle_reasons]
        obs.append(
            Observation(
                subject=f"gpu{gpu.index}",
                raise_now=bool(reasons),
                clear_now=not reasons,
                message=f"GPU {gpu.index} ({gpu.name}) throttled: {', '.join(reasons)}"
                if reasons
                else f"GPU {gpu.index} ({gpu.name}) no longer throttled",
            )
        )
    return obs, _gpus_complete(snap)


def _gpu_ecc(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    obs = []
    for gpu in snap.gpu.gpus:
        count = gpu.ecc_uncorrected_errors
        if count is None:
            continue
        obs.append(
            Observation(
                subject=f"gpu{gpu.index}",
                raise_now=count >= cfg.gpu_ecc_uncorrected_raise_count,
                clear_now=count == 0,
                message=f"GPU {gpu.index} ({gpu.name}): {count} uncorrected ECC errors",
                value=count,
                threshold=cfg.gpu_ecc_uncorrected_raise_count,
            )
        )
    return obs, _gpus_complete(snap)


def _nvml_lost(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    lost = snap.gpu.status == "fault"
    message = snap.gpu.message if lost else f"NVML back: {snap.gpu.status}"
    return [Observation("nvml", raise_now=lost, clear_now=not lost, message=message)], True


def _no_active_model(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    model = snap.daemon.active_model
    message = "no active model" if model is None else f"serving {model.name} {model.version}"
    return [
        Observation("model", raise_now=model is None, clear_now=model is not None, message=message)
    ], True


def _hub_unreachable(snap: HealthSnapshot, cfg: HealthSection) -> tuple[list[Observation], bool]:
    """Never reached since start counts from the daemon's start."""
    since = snap.daemon.last_hub_contact_s
    if since is None:
        since = snap.process.start_time_s
    silent_s = max(0.0, snap.taken_at_s - since)
    return [
        Observation(
            subject="hub",
            raise_now=silent_s >= cfg.hub_unreachable_raise_s,
            clear_now=silent_s < cfg.hub_unreachable_clear_s,
            message=f"no contact with the hub for {silent_s:.0f} s",
            value=silent_s,
            threshold=cfg.hub_unreachable_raise_s,
        )
    ], True


RULES: tuple[Rule, ...] = (
    Rule("disk_full", Severity.CRITICAL, _disk_full),
    Rule("memory_pressure", Severity.WARNING, _memory_pressure),
    Rule("gpu_temperature", Severity.CRITICAL, _gpu_temperature),
    Rule(
        "gpu_throttling",
        Severity.WARNING,
        _gpu_throttling,
        clear_after=lambda cfg: cfg.gpu_throttle_clear_after_samples,
    ),
    Rule("gpu_ecc_errors", Severity.CRITICAL, _gpu_ecc),
    Rule("nvml_lost", Severity.CRITICAL, _nvml_lost),
    Rule("no_active_model", Severity.WARNING, _no_active_model),
    Rule("hub_unreachable", Severity.WARNING, _hub_unreachable),
)
