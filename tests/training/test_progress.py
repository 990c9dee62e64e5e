"""Progress of long model work where stderr is not a terminal (a log, CI): plain status lines,
rate-limited, never carriage-return redraws; and nothing at all when the caller disables it."""

from __future__ import annotations

import time

import pytest
from tqdm import tqdm

from models.progress import progress_bar


def test_a_log_gets_plain_status_lines_with_the_postfix(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress_bar(total=4, desc="pretrain (supervised)", unit="step", mininterval=0)
    for _ in range(4):
        bar.update(1)
        bar.set_postfix(loss="0.4123", refresh=False)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("pretrain (supervised): 0/4 step (0 %), 00:00 so far")
    assert lines[-1].startswith("pretrain (supervised): 4/4 step (100 %)")
    assert lines[-1].endswith("to go, loss=0.4123")


def test_a_log_gets_a_line_a_minute_not_one_per_update(
        capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress_bar(iterable=range(5000), desc="tiles", unit="tile"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("tiles: 0/5000 tile (0 %)")
    assert lines[-1].startswith("tiles: 5000/5000 tile (100 %)")
    assert len(lines) <= 3


def test_disabled_progress_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress_bar(total=3, desc="fine-tune", enabled=False, mininterval=0)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""


def test_tqdms_monitor_thread_adds_no_lines_between_the_minutes(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm's monitor thread redraws a bar whose display lags ``maxinterval`` (10 s); in a log
    that was a second line a minute (seen in CI). Time scaled down: lines every 1 s asked for,
    the monitor looking every 0.05 s for a lag of 0.2 s, 3 s of steady updates."""
    monkeypatch.setattr(tqdm, "monitor_interval", 0.05)
    bar = progress_bar(total=10**6, desc="pretrain", unit="step", mininterval=1, maxinterval=0.2)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        bar.update(1)
        time.sleep(0.005)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 5, lines  # the first, at most one a second, the last
