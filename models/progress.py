"""Progress bars for long model work, shown only to a person watching a terminal.

A bar written into a log file or CI output is a stream of carriage-return updates that nobody can
read, so a bar is drawn only when the caller asks for one *and* stderr is a terminal (tqdm's
``disable=None``).
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar on stderr, or a silent one when disabled or stderr is not a terminal."""
    return tqdm(disable=None if enabled else True, **kwargs)
