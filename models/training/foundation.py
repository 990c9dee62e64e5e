"""The demo's foundation model: small, built on a short budget, cached between runs.

``build_foundation_model()`` pre-trains (MAE by default) with a step budget and fixed
precision and thread count, so the same seed gives the same weights bit for bit, and keeps the
artifact under the user's cache directory keyed by everything that determines it. A second
call with the same arguments is instant; a killed build resumes from its checkpoint.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from appliance.errors import DataError
from models.artifact import load_artifact
from models.training.pretrain import PretrainConfig, pretrain

DEMO_CONFIG = PretrainConfig(
    method="mae",
    preset="vit-tiny-p16-224",
    img_size=64,
    domains=(1, 2, 3, 4),
    tiles_per_domain=400,
    steps=300,
    batch_size=64,
    precision="fp32",
    threads=1,
)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spoke``, else ``~/.cache/spoke``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spoke"


def cache_key(cfg: PretrainConfig) -> str:
    """Everything that changes the weights, hashed (threads and precision included: both
    change floating-point rounding)."""
    data = dataclasses.asdict(cfg) | cfg.fingerprint()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_foundation_model(
    seed: int = 0,
    config: PretrainConfig = DEMO_CONFIG,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """The artifact directory of the foundation model for ``seed``, building it if needed."""
    if config.steps is None or config.precision == "auto" or config.threads is None:
        raise DataError("a reproducible build needs a step budget, a fixed precision and threads")
    cfg = dataclasses.replace(config, seed=seed)
    root = (cache or cache_dir()) / "foundation"
    path = root / f"{cfg.method}-{cfg.preset}-{cfg.vit.img_size}px-seed{seed}-{cache_key(cfg)}"
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
        f"foundation model: building with seed {seed} ({cfg.method}, {cfg.steps} steps on "
        f"{len(cfg.domains)} generated sites); cached in {path}"
    )
    root.mkdir(parents=True, exist_ok=True)
    pretrain(
        cfg,
        path,
        checkpoint=path.with_name(path.name + ".ckpt"),
        log=log,
        progress=progress,
        name=f"spoke-foundation-{cfg.method}",
    )
    return path
