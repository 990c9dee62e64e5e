"""Keep the calling thread's alternate signal stack across a native library's set-up.

OpenVINO 2026.4's CPU plugin gives the thread that loads it (a Core's first use) a signal stack
of its own and, when that Core is freed, puts back the stack it found. Freed in another order
than they were made (two Cores, the first freed first), a thread is left with a stack that was
unmapped, and the next signal Python handles on it (every Python handler runs on the signal
stack: CPython installs them with SA_ONSTACK) kills the process with SIGSEGV. That is SIGUSR1
from ``spoke finetune start`` or SIGHUP from ``spoke models`` for the daemon; measured in the
test suite, which died that way. Putting the thread's own stack back right after the set-up
means the plugin only ever saves, and later restores, a stack that stays valid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager


class _StackT(ctypes.Structure):
    """``stack_t`` of sigaltstack(2) on Linux."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _sigaltstack(new: _StackT | None, old: _StackT | None) -> None:
    if _libc.sigaltstack(
        ctypes.byref(new) if new is not None else None,
        ctypes.byref(old) if old is not None else None,
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"sigaltstack: {os.strerror(err)}")


def current_signal_stack() -> tuple[int, int]:
    """The calling thread's alternate signal stack as (address, size); (0, 0) for none."""
    stack = _StackT()
    _sigaltstack(None, stack)
    return stack.ss_sp or 0, stack.ss_size


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the signal stack it had before."""
    saved = _StackT()
    _sigaltstack(None, saved)
    try:
        yield
    finally:
        # SS_ONSTACK is a state the kernel reports, not a flag it accepts back.
        saved.ss_flags &= ~1
        _sigaltstack(saved, None)
