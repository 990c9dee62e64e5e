"""Progress of long model work where stderr is not a terminal (a log, CI): plain status lines,
rate-limited, never carriage-return redraws; and nothing at all when the caller disables it."""

from __future__ import annotations

import pytest

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
