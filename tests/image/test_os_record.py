"""What a factory reset keeps of the OS update journal (image/.../usr/lib/spoke/os-record): the
versions that failed on the box, read from a data partition's tree the daemon wrote, every
other byte dropped. Run as the script itself (a subprocess), on files laid out as the daemon
lays them out; its output must be a journal the daemon reads."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon.osupdate.service import OsJournal

OS_RECORD = Path(__file__).resolve().parents[2] / "image/mkosi/mkosi.extra/usr/lib/spoke/os-record"

ROLLED_BACK: dict[str, Any] = {
    "desired": {"version": "3", "target": "os/3/manifest.json"},
    "staged": None,
    "booting": None,
    "refused": ["3"],
    "last": {"version": "3", "outcome": "rolled-back", "code": "rolled-back", "ts": 1.5,
             "reason": "rolled back: spoke-health failed: hub not reached"},
}


def data_with(tmp_path: Path, journal: Any) -> Path:
    data = tmp_path / "data"
    (data / "os").mkdir(parents=True)
    text = journal if isinstance(journal, str) else json.dumps(journal)
    (data / "os" / "journal.json").write_text(text)
    return data


def record(data: Path) -> str:
    done = subprocess.run([sys.executable, str(OS_RECORD), str(data)], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def test_a_rollback_is_kept_as_a_journal_the_daemon_reads(tmp_path: Path) -> None:
    kept = OsJournal.model_validate_json(record(data_with(tmp_path, ROLLED_BACK)))
    assert kept.refused == ["3"]
    assert kept.last is not None
    assert (kept.last.version, kept.last.outcome, kept.last.reason) == (
        "3", "rolled-back", "rolled back: spoke-health failed: hub not reached")
    # what the box was doing is not kept: it starts afresh from what the hub desires
    assert (kept.desired, kept.staged, kept.booting) == (None, None, None)


def test_nothing_refused_keeps_nothing(tmp_path: Path) -> None:
    last = {**ROLLED_BACK["last"], "outcome": "committed"}
    journal = {**ROLLED_BACK, "refused": [], "last": last}
    assert record(data_with(tmp_path, journal)) == ""


def test_no_journal_keeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert record(tmp_path / "data") == ""


def test_a_last_outcome_that_is_not_a_failure_is_dropped(tmp_path: Path) -> None:
    journal = {**ROLLED_BACK, "refused": ["3"],
               "last": {**ROLLED_BACK["last"], "version": "4", "outcome": "committed"}}
    assert json.loads(record(data_with(tmp_path, journal))) == {"refused": ["3"]}


def test_values_that_are_not_versions_are_dropped(tmp_path: Path) -> None:
    journal = {**ROLLED_BACK, "refused": ["3", "../etc", "3; reboot", "", 4, "x1", "3"]}
    assert json.loads(record(data_with(tmp_path, journal)))["refused"] == ["3"]


def test_a_linked_journal_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text(json.dumps(ROLLED_BACK))
    data = tmp_path / "data"
    (data / "os").mkdir(parents=True)
    (data / "os" / "journal.json").symlink_to(elsewhere)
    assert record(data) == ""


def test_a_linked_os_directory_is_not_followed(tmp_path: Path) -> None:
    data_with(tmp_path / "real", ROLLED_BACK)
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(tmp_path / "real" / "data" / "os", data / "os")
    assert record(data) == ""


def test_an_oversized_journal_is_not_read(tmp_path: Path) -> None:
    journal = {**ROLLED_BACK, "padding": "x" * 300_000}
    assert record(data_with(tmp_path, journal)) == ""


def test_a_journal_that_is_not_json_keeps_nothing(tmp_path: Path) -> None:
    assert record(data_with(tmp_path, '{"refused": ["3"')) == ""
