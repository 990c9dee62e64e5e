"""The hub's default foundation model: built from a seed on a step budget, cached between runs.

``build_foundation_model()`` pre-trains with ``DEFAULT_CONFIG`` (the recipe chosen by
measurement in docs/FOUNDATION-MODEL.md) with a step budget and a fixed precision and thread
count, so the same seed gives the same weights, and keeps the artifact under the user's cache
directory keyed by everything that determines it. A second call with the same arguments is
instant; a killed build resumes from its checkpoints. Under ``torchrun`` it trains
data-parallel and rank 0 writes.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from appliance.errors import DataError
from models.artifact import load_artifact
from models.cpu import CPUINFO, cpu_flags
from models.training import distributed
from models.training.pretrain import PretrainConfig, pretrain


def native_precision(cpuinfo: Path = CPUINFO) -> str:
    """``bf16`` where this CPU does bf16 arithmetic itself (the ``avx512_bf16`` or ``amx_bf16``
    flag), else ``fp32``, and ``fp32`` on a GPU node (autocast here is the CPU's). A fact of the
    machine, not a timing, so a machine builds the same weights from the same seed every time;
    on Zen 4 a default step took 1.04 s against fp32's 1.41 s (docs/FOUNDATION-MODEL.md).
    Without those flags bf16 is emulated, and slower than fp32."""
    if torch.cuda.is_available():
        return "fp32"
    return "bf16" if cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"} else "fp32"


#: Supervised on the generated labels of many sites (it beat MAE-then-supervised on the same
#: budget: docs/FOUNDATION-MODEL.md), at 128 px (a 1 to 3 mm crack is a visible line, not a
#: sub-pixel one); the head stays trained and its thresholds are calibrated on a site outside
#: the training set; bf16 where the CPU has it (the same scores, 0.74x the time a step on Zen 4:
#: docs/FOUNDATION-MODEL.md, session 12). Each training image keeps half its patches
#: (PatchDropout), which halves a step: 2,000 such steps cost about what 900 whole ones did
#: and read better on real photos (session 16).
DEFAULT_CONFIG = PretrainConfig(
    method="supervised",
    preset="vit-tiny-p16-128",
    domains=tuple(range(1, 25)),
    tiles_per_domain=200,
    steps=2000,
    patch_keep=0.5,
    batch_size=64,
    precision=native_precision(),
    threads=2,
    head="trained",
)
#: Named recipes: ``default`` is the hub's model (and what ``make demo`` builds: its 360-step
#: cut could not reach the demo's targets, docs/FOUNDATION-MODEL.md session 5); ``tiny`` (MAE
#: then supervised) builds in seconds (tests, notebooks).
RECIPES: dict[str, PretrainConfig] = {
    "default": DEFAULT_CONFIG,
    "tiny": dataclasses.replace(
        DEFAULT_CONFIG,
        method="mae+supervised",  # both phases, so tests cover them
        mae_share=0.25,
        preset="tiny",
        domains=(1, 2),
        tiles_per_domain=16,
        steps=4,
        batch_size=8,
        precision="fp32",
        threads=1,
        calibration_tiles=32,
    ),
}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spoke``, else ``~/.cache/spoke``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spoke"


def cache_key(cfg: PretrainConfig) -> str:
    """Everything that changes the weights, hashed (threads and precision included: both
    change floating-point rounding; so does the number of processes)."""
    data = dataclasses.asdict(cfg) | cfg.fingerprint() | {"processes": distributed.current().world}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cached_path(seed: int, config: PretrainConfig, cache: Path | None = None) -> Path:
    """Where the model for ``seed`` and ``config`` is (or will be) kept."""
    cfg = dataclasses.replace(config, seed=seed)
    root = (cache or cache_dir()) / "foundation"
    return root / f"{cfg.method}-{cfg.preset}-{cfg.vit.img_size}px-seed{seed}-{cache_key(cfg)}"


def build_foundation_model(
    seed: int = 0,
    config: PretrainConfig = DEFAULT_CONFIG,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """The artifact directory of the foundation model for ``seed``, building it if needed."""
    if config.precision == "auto" or config.threads is None:
        raise DataError("a reproducible build needs a fixed precision and thread count")
    if config.steps is None:
        log(
            "foundation model: a time budget makes the weights depend on this machine's "
            "speed; give a step budget for the same weights from the same seed"
        )
    cfg = dataclasses.replace(config, seed=seed)
    path = cached_path(seed, config, cache)
    if path.is_dir():
        try:
            load_artifact(path)
        except DataError as exc:
            raise DataError(
                f"the cached model {path} is damaged ({exc}); delete it to rebuild"
            ) from exc
        log(f"foundation model: using the cached {path}")
        return path
    log(
        f"foundation model: building with seed {seed} ({cfg.method}, "
        f"{cfg.steps or cfg.seconds} {'steps' if cfg.steps else 's'} on "
        f"{len(cfg.domains)} generated sites); cached in {path}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pretrain(
        cfg,
        path,
        checkpoint=path.with_name(path.name + ".ckpt"),
        log=log,
        progress=progress,
        name="spoke-foundation",
    )
    return path
