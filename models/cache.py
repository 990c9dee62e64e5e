"""Where derived files live: int8 graphs, OpenVINO blobs, TensorRT engines, ``auto``'s engine
choices and artifact verdicts. Entries are keyed by content, so a stale one is never used."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$SPOKE_ENGINE_CACHE``, else ``~/.cache/spoke/engines``."""
    env = os.environ.get("SPOKE_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spoke" / "engines"
