"""FAKE NVML for tests — not a GPU, not a simulator of one, and never used in production.

``FakeNvml`` mimics the surface of the ``pynvml`` module that ``daemon.health.nvml`` calls: the
same function names and arguments, NVML's documented return types (ctypes handles and the
``c_nvmlUtilization_t`` / ``c_nvmlMemory_t`` / ``c_nvmlEventData_t`` structs from pynvml
itself, milliwatts, MHz, percentages, CUDA versions as 12040), and pynvml's real ``NVMLError``
subclasses raised with NVML's documented error codes. Constants and error classes are taken
from the real pynvml, so a renamed constant breaks the tests as it would break production.

The readings are whatever a test puts in ``FakeGpu``; nothing here measures anything.
"""

import ctypes
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pynvml

GIB = 1024**3


@dataclass
class FakeGpu:
    """One pretend GPU; ``unsupported`` names functions that raise NVML_ERROR_NOT_SUPPORTED."""

    name: str = "FAKE NVIDIA A2"
    uuid: str = "GPU-00000000-fake-0000-0000-000000000000"
    util_gpu_percent: int = 37
    util_memory_percent: int = 12
    memory_total: int = 16 * GIB
    memory_used: int = 3 * GIB
    temperature_c: int = 54
    slowdown_c: int = 90
    shutdown_c: int = 95
    power_mw: int = 38_500
    power_limit_mw: int = 60_000
    sm_mhz: int = 1770
    mem_mhz: int = 6251
    clocks_event_reasons: int = 0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    pcie_gen: int = 4
    pcie_width: int = 16
    fan_percent: int = 30
    supported_events: int = (
        pynvml.nvmlEventTypeXidCriticalError
        | pynvml.nvmlEventTypeSingleBitEccError
        | pynvml.nvmlEventTypeDoubleBitEccError
        | pynvml.nvmlEventTypePState
        | pynvml.nvmlEventTypeClock
    )
    unsupported: set[str] = field(default_factory=set)


def _error(code: int) -> pynvml.NVMLError:
    """``pynvml.NVMLError(code)`` returns the matching subclass, e.g. NVMLError_GpuIsLost."""
    return pynvml.NVMLError(code)


class FakeNvml:
    """A FAKE ``pynvml``: the functions below, plus pynvml's constants and error classes.

    Test controls: ``library_missing`` / ``driver_loaded`` decide what ``nvmlInit`` raises;
    ``break_with(code)`` makes every later call raise that error (the driver went away);
    ``recover()`` undoes it; ``post_event`` queues an NVML event for a GPU.
    """

    def __init__(self, gpus: list[FakeGpu] | None = None) -> None:
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.library_missing = False
        self.driver_loaded = True
        self.broken: int | None = None
        self.initialised = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        self._event_sets: dict[int, tuple[int, int, deque[tuple[int, int]]]] = {}
        self._next_set = 1

    def __getattr__(self, name: str) -> Any:
        """Constants (NVML_*, nvmlEventType*...) and NVMLError classes come from real pynvml."""
        if name.startswith(("NVML_", "NVMLError", "nvmlEventType", "nvmlClocks")):
            return getattr(pynvml, name)
        raise AttributeError(f"FakeNvml does not fake {name}")

    # controls

    def break_with(self, code: int) -> None:
        self.broken = code

    def recover(self) -> None:
        self.broken = None

    def post_event(self, gpu_index: int, event_type: int, data: int = 0) -> None:
        for gpu, mask, queue in self._event_sets.values():
            if gpu == gpu_index and mask & event_type:
                queue.append((event_type, data))

    # the faked NVML functions

    def _check(self) -> None:
        if self.broken is not None:
            raise _error(self.broken)
        if not self.initialised:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: Any, function: str) -> FakeGpu:
        self._check()
        index = ctypes.cast(handle, ctypes.c_void_p).value
        if index is None or not 1 <= index <= len(self.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index - 1]
        if function in gpu.unsupported:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.library_missing:
            raise _error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if not self.driver_loaded:
            raise _error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        if self.broken is not None:
            raise _error(self.broken)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._check()
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check()
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ctypes.cast(ctypes.c_void_p(index + 1), pynvml.c_nvmlDevice_t)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> pynvml.c_nvmlUtilization_t:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        util = pynvml.c_nvmlUtilization_t()
        util.gpu, util.memory = gpu.util_gpu_percent, gpu.util_memory_percent
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> pynvml.c_nvmlMemory_t:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.used = gpu.memory_total, gpu.memory_used
        mem.free = gpu.memory_total - gpu.memory_used
        return mem

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperatureThreshold")
        if threshold == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            return gpu.slowdown_c
        if threshold == pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN:
            return gpu.shutdown_c
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        if clock == pynvml.NVML_CLOCK_SM:
            return gpu.sm_mhz
        if clock == pynvml.NVML_CLOCK_MEM:
            return gpu.mem_mhz
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if counter != pynvml.NVML_VOLATILE_ECC:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        return gpu.ecc_uncorrected

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrPcieLinkGeneration").pcie_gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrPcieLinkWidth").pcie_width

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetFanSpeed").fan_percent

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetSupportedEventTypes").supported_events

    def nvmlEventSetCreate(self) -> Any:
        self._check()
        number, self._next_set = self._next_set, self._next_set + 1
        self._event_sets[number] = (-1, 0, deque())
        return ctypes.cast(ctypes.c_void_p(number), pynvml.c_nvmlEventSet_t)

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        gpu = self._gpu(handle, "nvmlDeviceRegisterEvents")
        if event_types & ~gpu.supported_events:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        number = self._set_number(event_set)
        index = ctypes.cast(handle, ctypes.c_void_p).value or 0
        self._event_sets[number] = (index - 1, event_types, self._event_sets[number][2])

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> pynvml.c_nvmlEventData_t:
        self._check()
        gpu, _, queue = self._event_sets[self._set_number(event_set)]
        if not queue:
            raise _error(pynvml.NVML_ERROR_TIMEOUT)
        event_type, data = queue.popleft()
        event = pynvml.c_nvmlEventData_t()
        event.device = ctypes.cast(ctypes.c_void_p(gpu + 1), pynvml.c_nvmlDevice_t)
        event.eventType, event.eventData = event_type, data
        return event

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._check()
        del self._event_sets[self._set_number(event_set)]

    def _set_number(self, event_set: Any) -> int:
        number = ctypes.cast(event_set, ctypes.c_void_p).value
        if number not in self._event_sets:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return number
