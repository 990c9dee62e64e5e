"""A thin adapter over NVML (``nvidia-ml-py``, import name ``pynvml``).

The adapter only calls NVML's documented functions on the object it is given, so tests can
hand it a fake with the same surface. ``pynvml`` is imported lazily: the appliance runs on
CPU-only boxes where it is not installed. No NVML, no driver, or no GPU is a plain state of
the GPU section; NVML failing after it worked (driver unloaded, GPU fallen off the bus) is a
fault in the snapshot. No NVML error ever leaves this module.
"""

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from appliance.health import GpuEvent, GpuSection, GpuStats, GpuStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bits of nvmlClocksEventReasons (formerly ClocksThrottleReasons), from nvml.h.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)

# Event types worth a report (nvmlEventType*, from nvml.h); P-state and clock changes are not.
CRITICAL_EVENTS: tuple[tuple[int, str], ...] = (
    (0x0001, "single_bit_ecc_error"),
    (0x0002, "double_bit_ecc_error"),
    (0x0008, "xid_critical_error"),
    (0x0200, "single_bit_ecc_error_storm"),
    (0x0400, "dram_retirement_event"),
    (0x0800, "dram_retirement_failure"),
    (0x1000, "non_fatal_poison_error"),
    (0x2000, "fatal_poison_error"),
    (0x4000, "gpu_unavailable_error"),
    (0x8000, "gpu_recovery_action"),
)
_XID_EVENT = 0x0008
_CRITICAL_MASK = sum(bit for bit, _ in CRITICAL_EVENTS)
# An event storm must not keep one collection cycle busy.
MAX_EVENTS_PER_READ = 64


def decode_throttle_reasons(mask: int) -> list[str]:
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    unknown = mask & ~sum(bit for bit, _ in THROTTLE_REASONS)
    if unknown:
        names.append(f"unknown_{unknown:#x}")
    return names


def _event_name(event_type: int) -> str:
    return dict(CRITICAL_EVENTS).get(event_type, f"event_{event_type:#x}")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def cuda_version_text(version: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{version // 1000}.{(version % 1000) // 10}"


class NvmlReader:
    """Opens NVML once, reads every GPU per call, and reopens after a fault.

    ``nvml`` is the NVML binding to use; ``None`` imports ``pynvml`` on ``open()``. Not thread
    safe: the health service calls it from one worker thread at a time.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml
        self._handles: list[Any] = []
        self._event_sets: list[Any | None] = []
        self._opened = False
        self._status: GpuStatus = "unavailable"
        self._message = ""
        self._driver: str | None = None
        self._cuda: str | None = None
        self._worked = False

    def open(self) -> None:
        """Initialise NVML and find the GPUs; the outcome is kept as the section's status."""
        self._opened = True
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self._set("unavailable", "NVML not available: nvidia-ml-py is not installed")
                return
            self._nvml = pynvml
        n = self._nvml
        try:
            n.nvmlInit()
        except n.NVMLError as exc:
            self._init_failed(exc)
            return
        try:
            count = n.nvmlDeviceGetCount()
            self._handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._driver = _text(n.nvmlSystemGetDriverVersion())
            self._cuda = cuda_version_text(n.nvmlSystemGetCudaDriverVersion())
            for handle in self._handles:
                self._event_sets.append(self._register_events(handle))
        except n.NVMLError as exc:
            self._fail(exc)
            return
        if not self._handles:
            if self._worked:
                self._set("fault", "NVML lost: the GPUs seen earlier are gone")
            else:
                self._set("absent", "no NVIDIA GPU")
            return
        if self._status == "fault":
            log.warning("NVML is back", extra={"gpus": len(self._handles)})
        self._worked = True
        self._set("ok", "")

    def read(self) -> GpuSection:
        """The GPU section now. After a fault, each read tries to reopen NVML first."""
        if not self._opened or self._status == "fault":
            self.close()
            self.open()
        if self._status != "ok":
            return GpuSection(status=self._status, message=self._message)
        n = self._nvml
        try:
            gpus = [self._gpu(i, h) for i, h in enumerate(self._handles)]
            events = [e for i, es in enumerate(self._event_sets) for e in self._events(i, es)]
        except n.NVMLError as exc:
            self._fail(exc)
            return GpuSection(status="fault", message=self._message)
        return GpuSection(
            status="ok",
            driver_version=self._driver,
            cuda_driver_version=self._cuda,
            gpus=gpus,
            events=events,
        )

    def close(self) -> None:
        """Free event sets and shut NVML down; errors here change nothing worth reporting."""
        n = self._nvml
        if n is None or not self._opened:
            return
        for es in self._event_sets:
            if es is not None:
                self._quietly(n.nvmlEventSetFree, es)
        if self._status != "unavailable":
            self._quietly(n.nvmlShutdown)
        self._handles, self._event_sets = [], []
        self._opened = False

    def _set(self, status: GpuStatus, message: str) -> None:
        self._status, self._message = status, message

    def _init_failed(self, exc: Exception) -> None:
        n = self._nvml
        code = getattr(exc, "value", None)
        missing = code in (n.NVML_ERROR_LIBRARY_NOT_FOUND, n.NVML_ERROR_DRIVER_NOT_LOADED)
        if missing and not self._worked:
            self._set("unavailable", f"NVML not available: {exc}")
        else:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self._status != "fault":
            log.error("NVML failed", extra={"error": str(exc)})
        self._set("fault", f"NVML {'lost' if self._worked else 'failed'}: {exc}")

    def _quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except self._nvml.NVMLError as exc:
            log.debug("NVML cleanup call failed", extra={"error": str(exc)})

    def _unsupported(self, exc: Any) -> bool:
        """This board or driver does not offer the reading: a gap, not a fault."""
        n = self._nvml
        return exc.value in (
            n.NVML_ERROR_NOT_SUPPORTED,
            n.NVML_ERROR_NO_PERMISSION,
            n.NVML_ERROR_FUNCTION_NOT_FOUND,
            n.NVML_ERROR_NO_DATA,
        )

    def _optional(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call ``fn``; ``None`` when the reading is unsupported, other NVML errors propagate."""
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if self._unsupported(exc):
                return None
            raise

    def _gpu(self, index: int, handle: Any) -> GpuStats:
        n, opt = self._nvml, self._optional
        util = opt(n.nvmlDeviceGetUtilizationRates, handle)
        mem = opt(n.nvmlDeviceGetMemoryInfo, handle)
        power = opt(n.nvmlDeviceGetPowerUsage, handle)
        limit = opt(n.nvmlDeviceGetEnforcedPowerLimit, handle)
        sm = opt(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_SM)
        memclk = opt(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_MEM)
        fan = opt(n.nvmlDeviceGetFanSpeed, handle)
        throttle = self._throttle_mask(handle)
        return GpuStats(
            index=index,
            name=_text(n.nvmlDeviceGetName(handle)),
            uuid=_text(n.nvmlDeviceGetUUID(handle)),
            utilization_ratio=None if util is None else util.gpu / 100,
            memory_utilization_ratio=None if util is None else util.memory / 100,
            memory_used_bytes=None if mem is None else mem.used,
            memory_total_bytes=None if mem is None else mem.total,
            temperature_celsius=opt(n.nvmlDeviceGetTemperature, handle, n.NVML_TEMPERATURE_GPU),
            temperature_slowdown_celsius=opt(
                n.nvmlDeviceGetTemperatureThreshold,
                handle,
                n.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
            ),
            temperature_shutdown_celsius=opt(
                n.nvmlDeviceGetTemperatureThreshold,
                handle,
                n.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
            ),
            power_draw_watts=None if power is None else power / 1000,
            power_limit_watts=None if limit is None else limit / 1000,
            clock_sm_hertz=None if sm is None else sm * 1e6,
            clock_memory_hertz=None if memclk is None else memclk * 1e6,
            throttle_reasons=[] if throttle is None else decode_throttle_reasons(throttle),
            ecc_corrected_errors=opt(
                n.nvmlDeviceGetTotalEccErrors,
                handle,
                n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                n.NVML_VOLATILE_ECC,
            ),
            ecc_uncorrected_errors=opt(
                n.nvmlDeviceGetTotalEccErrors,
                handle,
                n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                n.NVML_VOLATILE_ECC,
            ),
            pcie_link_generation=opt(n.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            pcie_link_width=opt(n.nvmlDeviceGetCurrPcieLinkWidth, handle),
            fan_speed_ratio=None if fan is None else fan / 100,
        )

    def _throttle_mask(self, handle: Any) -> int | None:
        """Drivers before R535 only know the older name of the same call."""
        n = self._nvml
        for name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            fn = getattr(n, name, None)
            if fn is None:
                continue
            try:
                return int(fn(handle))
            except n.NVMLError as exc:
                if exc.value == n.NVML_ERROR_FUNCTION_NOT_FOUND:
                    continue
                if self._unsupported(exc):
                    return None
                raise
        return None

    def _register_events(self, handle: Any) -> Any | None:
        """An event set for this GPU's critical events, or ``None`` where NVML offers none."""
        n = self._nvml
        supported = self._optional(n.nvmlDeviceGetSupportedEventTypes, handle)
        mask = (supported or 0) & _CRITICAL_MASK
        if not mask:
            return None
        event_set = n.nvmlEventSetCreate()
        try:
            n.nvmlDeviceRegisterEvents(handle, mask, event_set)
        except n.NVMLError as exc:
            self._quietly(n.nvmlEventSetFree, event_set)
            if self._unsupported(exc):
                return None
            raise
        return event_set

    def _events(self, index: int, event_set: Any | None) -> list[GpuEvent]:
        """Drain what arrived since the previous read, without waiting."""
        n = self._nvml
        events: list[GpuEvent] = []
        while event_set is not None and len(events) < MAX_EVENTS_PER_READ:
            try:
                data = n.nvmlEventSetWait(event_set, 0)
            except n.NVMLError as exc:
                if exc.value == n.NVML_ERROR_TIMEOUT:
                    break
                raise
            events.append(
                GpuEvent(
                    gpu_index=index,
                    type=_event_name(data.eventType),
                    xid=data.eventData if data.eventType == _XID_EVENT else None,
                    data=data.eventData,
                )
            )
        return events
