"""The NVML adapter against a FAKE NVML (tests/health/fake_nvml.py), and the real one on a GPU."""

import sys

import pynvml
import pytest

from daemon.health.nvml import NvmlReader, decode_throttle_reasons
from tests.health.fake_nvml import GIB, FakeGpu, FakeNvml


def test_reads_every_gpu_field_in_base_units() -> None:
    reader = NvmlReader(FakeNvml([FakeGpu(temperature_c=61)]))
    section = reader.read()
    assert section.status == "ok"
    assert section.driver_version == "550.54.15"
    assert section.cuda_driver_version == "12.4"
    gpu = section.gpus[0]
    assert (gpu.name, gpu.uuid) == ("FAKE NVIDIA A2", "GPU-00000000-fake-0000-0000-000000000000")
    assert gpu.utilization_ratio == pytest.approx(0.37)
    assert (gpu.memory_used_bytes, gpu.memory_total_bytes) == (3 * GIB, 16 * GIB)
    assert gpu.temperature_celsius == 61
    assert (gpu.temperature_slowdown_celsius, gpu.temperature_shutdown_celsius) == (90, 95)
    assert (gpu.power_draw_watts, gpu.power_limit_watts) == (38.5, 60.0)
    assert (gpu.clock_sm_hertz, gpu.clock_memory_hertz) == (1770e6, 6251e6)
    assert (gpu.pcie_link_generation, gpu.pcie_link_width) == (4, 16)
    assert gpu.fan_speed_ratio == pytest.approx(0.30)
    assert (gpu.ecc_corrected_errors, gpu.ecc_uncorrected_errors) == (0, 0)


def test_reads_several_gpus_in_index_order() -> None:
    fake = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")])
    assert [(g.index, g.uuid) for g in NvmlReader(fake).read().gpus] == [(0, "GPU-a"), (1, "GPU-b")]


def test_throttle_reasons_are_decoded_to_names() -> None:
    mask = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    gpu = NvmlReader(FakeNvml([FakeGpu(clocks_event_reasons=mask)])).read().gpus[0]
    assert gpu.throttle_reasons == ["sw_power_cap", "hw_thermal_slowdown"]


def test_unknown_throttle_bits_are_named_not_dropped() -> None:
    assert decode_throttle_reasons(0x1 | 0x8000) == ["gpu_idle", "unknown_0x8000"]


def test_old_driver_without_clocks_event_reasons_uses_throttle_reasons() -> None:
    fake = FakeNvml([FakeGpu(clocks_event_reasons=pynvml.nvmlClocksEventReasonHwSlowdown)])

    def missing(handle: object) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    fake.nvmlDeviceGetCurrentClocksEventReasons = missing  # type: ignore[method-assign]
    assert NvmlReader(fake).read().gpus[0].throttle_reasons == ["hw_slowdown"]


def test_readings_a_board_does_not_support_are_none_not_a_fault() -> None:
    passive = FakeGpu(unsupported={"nvmlDeviceGetFanSpeed", "nvmlDeviceGetTotalEccErrors"})
    section = NvmlReader(FakeNvml([passive])).read()
    assert section.status == "ok"
    gpu = section.gpus[0]
    assert (gpu.fan_speed_ratio, gpu.ecc_uncorrected_errors) == (None, None)


def test_no_gpu_says_so_plainly() -> None:
    section = NvmlReader(FakeNvml(gpus=[])).read()
    assert (section.status, section.message) == ("absent", "no NVIDIA GPU")


def test_missing_nvml_library_is_not_an_error() -> None:
    fake = FakeNvml()
    fake.library_missing = True
    section = NvmlReader(fake).read()
    assert section.status == "unavailable"
    assert section.message == "NVML not available: NVML Shared Library Not Found"


def test_driver_not_loaded_at_start_is_not_an_error() -> None:
    fake = FakeNvml()
    fake.driver_loaded = False
    section = NvmlReader(fake).read()
    assert (section.status, section.message) == (
        "unavailable",
        "NVML not available: Driver Not Loaded",
    )


def test_nvidia_ml_py_not_installed_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    section = NvmlReader().read()
    assert section.status == "unavailable"
    assert "nvidia-ml-py is not installed" in section.message


def test_gpu_lost_mid_run_is_a_fault_not_a_crash() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    assert reader.read().status == "ok"
    fake.break_with(pynvml.NVML_ERROR_GPU_IS_LOST)
    section = reader.read()
    assert (section.status, section.message) == ("fault", "NVML lost: GPU is lost")


def test_driver_unloaded_mid_run_is_a_fault_not_unavailable() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.break_with(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert reader.read().status == "fault"
    assert reader.read().status == "fault"


def test_nvml_is_reopened_when_the_driver_comes_back() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.break_with(pynvml.NVML_ERROR_GPU_IS_LOST)
    reader.read()
    fake.recover()
    assert reader.read().status == "ok"


def test_only_critical_event_types_are_registered() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.post_event(0, pynvml.nvmlEventTypePState)
    assert reader.read().events == []


def test_xid_events_are_reported_once_with_their_number() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.post_event(0, pynvml.nvmlEventTypeXidCriticalError, data=79)
    events = reader.read().events
    assert [(e.gpu_index, e.type, e.xid) for e in events] == [(0, "xid_critical_error", 79)]
    assert reader.read().events == []


def test_gpu_without_event_support_still_reads() -> None:
    fake = FakeNvml([FakeGpu(unsupported={"nvmlDeviceGetSupportedEventTypes"})])
    section = NvmlReader(fake).read()
    assert (section.status, section.events) == ("ok", [])


def test_close_frees_event_sets_and_shuts_nvml_down() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    reader.close()
    assert fake.initialised == 0


@pytest.mark.gpu
def test_real_nvml_reads_every_gpu() -> None:
    reader = NvmlReader()
    section = reader.read()
    try:
        if section.status in ("unavailable", "absent"):
            pytest.skip(f"no NVIDIA GPU here: {section.message}")
        assert section.status == "ok", section.message
        assert section.gpus and all(g.uuid.startswith("GPU-") for g in section.gpus)
        assert all(g.memory_total_bytes for g in section.gpus)
    finally:
        reader.close()


def test_gpus_vanishing_after_a_reopen_is_a_fault_not_no_gpu() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.break_with(pynvml.NVML_ERROR_GPU_IS_LOST)
    reader.read()
    fake.recover()
    fake.gpus = []
    section = reader.read()
    assert (section.status, section.message) == (
        "fault",
        "NVML lost: the GPUs seen earlier are gone",
    )


def test_broken_nvml_at_start_is_a_fault_that_says_failed() -> None:
    fake = FakeNvml()
    fake.break_with(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    section = NvmlReader(fake).read()
    assert section.status == "fault"
    assert section.message.startswith("NVML failed: ")
