"""Hardware facts an appliance reports when it enrolls: who it is and what it can run."""

import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil


def _read(path: str) -> str | None:
    try:
        value = Path(path).read_text().strip()
    except OSError:
        return None
    return value or None


def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def nvidia_gpus() -> list[dict[str, Any]]:
    """GPUs through NVML when the driver and nvidia-ml-py are present; else none."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "uuid": pynvml.nvmlDeviceGetUUID(handle),
                    "memory_bytes": int(mem.total),
                }
            )
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        pynvml.nvmlShutdown()


def facts() -> dict[str, Any]:
    # Imported here: status-like commands import this module and must not load ``models``.
    from models.cpu import cpu_flags

    flags = cpu_flags()
    return {
        "machine_id": _read("/etc/machine-id"),
        "dmi_serial": _read("/sys/class/dmi/id/product_serial"),
        "product": _read("/sys/class/dmi/id/product_name"),
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_features": sorted(flags & {"avx2", "avx512f", "amx_bf16", "amx_int8", "asimd"}),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": nvidia_gpus(),
    }
