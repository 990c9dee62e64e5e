"""Progress for long model work: a bar for a person at a terminal, a line a minute in a log.

A bar written into a log file or CI output is a stream of carriage-return updates that nobody can
read, and no output at all leaves a 20-minute foundation build looking hung. So on a terminal
the caller gets a tqdm bar; elsewhere the same tqdm writes its status as a plain line at most
once a minute (and once at the end).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

#: How often a status line goes to a log that is not a terminal.
LOG_EVERY_S = 60.0
#: A status line: what, how far, how long so far and to go, and the caller's postfix (the loss).
LOG_LINE = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f} %), {elapsed} so far, "
            "{remaining} to go{postfix}")


class _Lines:
    """A stream for tqdm that turns each carriage-return redraw into a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar on stderr at a terminal, status lines on a stderr that is not one, or
    nothing when disabled."""
    if not enabled:
        return tqdm(disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(**kwargs)
    kwargs.pop("dynamic_ncols", None)
    # miniters=1 turns off tqdm's adaptive miniters, and with it the monitor thread's redraw of
    # a display that lags maxinterval (10 s): that made a second line a minute in CI's log.
    return tqdm(file=_Lines(sys.stderr), mininterval=kwargs.pop("mininterval", LOG_EVERY_S),
                miniters=1, bar_format=LOG_LINE, **kwargs)
