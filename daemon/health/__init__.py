"""Hardware and daemon health: collectors, NVML, Prometheus metrics, alerts, the service."""

from daemon.health.alerts import AlertEvaluator, HealthSection
from daemon.health.metrics import DaemonMetrics
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from daemon.health.service import HealthService
from daemon.health.snapshot import (
    ActiveModel,
    AlertEvent,
    DaemonFacts,
    GpuSection,
    HealthSnapshot,
)

__all__ = [
    "ActiveModel",
    "AlertEvaluator",
    "AlertEvent",
    "DaemonFacts",
    "DaemonMetrics",
    "GpuSection",
    "HealthSection",
    "HealthService",
    "HealthSnapshot",
    "NvmlReader",
    "Sampler",
]
