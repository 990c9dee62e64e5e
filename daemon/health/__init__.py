"""Hardware and daemon health: collectors, NVML, Prometheus metrics, alerts, the service."""

from appliance.config import HealthSection
from appliance.health import (
    ActiveModel,
    AlertEvent,
    DaemonFacts,
    GpuSection,
    HealthSnapshot,
)
from daemon.health.alerts import AlertEvaluator
from daemon.health.metrics import DaemonMetrics
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from daemon.health.service import HealthService

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
