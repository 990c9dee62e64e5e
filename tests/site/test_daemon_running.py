"""``daemon.state.daemon_running``: the one answer ``spoke status``, ``spoke health-gate`` and
``spoke finetune start`` give to "does the daemon run for this state directory?"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon.state import StateDir, daemon_running, read_status, signal_daemon


def test_a_live_daemon_that_has_not_stopped_runs():
    assert daemon_running({"pid": os.getpid()})


def test_a_daemon_that_said_it_stopped_does_not_run():
    assert not daemon_running({"pid": os.getpid(), "stopped": True})


def test_a_dead_process_does_not_run():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert not daemon_running({"pid": int(proc.stdout)})


def test_a_status_without_a_usable_pid_does_not_run():
    for status in ({}, {"pid": None}, {"pid": 0}, {"pid": "not a pid"}, {"pid": [1]}):
        assert not daemon_running(status), status


def test_an_unreadable_status_file_reads_as_empty(tmp_path: Path):
    state = StateDir(tmp_path)
    assert read_status(state) == {}
    state.status.write_text("{not json")
    assert read_status(state) == {}
    state.status.write_text(json.dumps([1, 2]))
    assert read_status(state) == {}
    state.status.write_text(json.dumps({"pid": 7}))
    assert read_status(state) == {"pid": 7}


def test_signal_daemon_reaches_a_running_daemon(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.status.write_text(json.dumps({"pid": os.getpid()}))
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: got.append(sig))
    try:
        assert signal_daemon(state, signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [signal.SIGUSR1]


def test_signal_daemon_says_so_when_no_daemon_runs(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert not signal_daemon(state, signal.SIGUSR1)
    state.status.write_text(json.dumps({"pid": os.getpid(), "stopped": True}))
    assert not signal_daemon(state, signal.SIGUSR1)
