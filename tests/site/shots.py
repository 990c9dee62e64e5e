"""Where page tests keep their screenshots: ``build/screenshots`` (override with
SPOKE_SCREENSHOTS), so a person can look at them after a run."""

import os
from pathlib import Path


def shot(name: str) -> Path:
    root = Path(os.environ.get("SPOKE_SCREENSHOTS", Path(__file__).parents[2] / "build" /
                               "screenshots"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.unlink(missing_ok=True)
    return path
