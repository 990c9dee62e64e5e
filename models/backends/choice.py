"""What ``auto`` measured, remembered in the engine cache so the next process does not measure.

A choice is valid for one ``ChoiceKey``: the model's bytes (sha256 of its graph and weights),
the versions of every installed engine, the hardware (GPU name, or CPU model, matrix flags and
thread count) and the batch size. Change any of them and the key changes, so a stale choice is
never read: it is simply not found. Versions come from package metadata, not imports, so
computing the key costs microseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write
from models.cpu import CPUINFO, cpu_flags

log = logging.getLogger(__name__)

#: Bump when the way ``auto`` decides changes: older records then stop matching.
CHOICE_FORMAT = 2
#: Each engine and the distributions that provide it (the first one installed counts).
ENGINE_DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
}
#: CPU flags that change which precision is fastest.
_MATRIX_FLAGS = frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}
)


def engine_versions() -> dict[str, str]:
    """``{engine: version}`` of every engine installed, from package metadata (no import)."""
    versions = {}
    for engine, dists in ENGINE_DISTRIBUTIONS.items():
        for dist in dists:
            try:
                versions[engine] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def cpu_identity() -> str:
    """CPU model name, the matrix-unit flags present and the usable core count."""
    name = "unknown CPU"
    try:
        with CPUINFO.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0))
    return f"{name} [{' '.join(sorted(flags & _MATRIX_FLAGS)) or 'no matrix flags'}] x{cores}"


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None. Without the NVIDIA driver's device node there is no
    GPU to ask about, and torch (seconds to import) is not imported to say so."""
    if not Path("/dev/nvidiactl").exists():
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


@dataclass(frozen=True)
class ChoiceKey:
    """Everything a measured choice depends on."""

    model_sha256: str
    engines: dict[str, str]
    hardware: str
    batch_size: int

    def digest(self) -> str:
        text = json.dumps({"format": CHOICE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class EngineChoice:
    """The measured rates (inputs/s per ``backend/precision``), what was refused and why, the
    int8 evaluations against fp32 (``quantize.Evaluation``), and the winner. ``source`` is
    ``measured`` or ``cache``; it is not stored."""

    pick: str
    rates: dict[str, float]
    refused: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured_at: float = field(default_factory=time.time)
    source: str = "measured"

    @property
    def backend(self) -> str:
        return self.pick.split("/", 1)[0]

    @property
    def precision(self) -> str:
        return self.pick.split("/", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pick": self.pick,
            "rates": self.rates,
            "refused": self.refused,
            "evaluations": self.evaluations,
            "measured_at": self.measured_at,
            "source": self.source,
        }


def choice_path(cache_dir: Path, key: ChoiceKey) -> Path:
    return cache_dir / f"{key.digest()}.choice.json"


def load_choice(cache_dir: Path, key: ChoiceKey) -> EngineChoice | None:
    """The stored choice for ``key``, or None (absent, or unreadable: then it is re-measured)."""
    path = choice_path(cache_dir, key)
    try:
        data = json.loads(path.read_text())
        choice = EngineChoice(
            pick=str(data["pick"]),
            rates={str(k): float(v) for k, v in data["rates"].items()},
            refused={str(k): str(v) for k, v in data["refused"].items()},
            evaluations={str(k): dict(v) for k, v in data["evaluations"].items()},
            measured_at=float(data["measured_at"]),
            source="cache",
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("engine cache: ignoring unreadable %s: %s", path, exc)
        return None
    if "/" not in choice.pick:
        log.warning("engine cache: ignoring %s: %r is not backend/precision", path, choice.pick)
        return None
    return choice


def save_choice(cache_dir: Path, key: ChoiceKey, choice: EngineChoice) -> Path:
    """Store ``choice`` with its key spelled out, so a person can read why it was made."""
    path = choice_path(cache_dir, key)
    record = {**choice.to_dict(), "key": asdict(key)}
    del record["source"]
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
