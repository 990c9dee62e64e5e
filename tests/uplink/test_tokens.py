"""``spoke tokens``: created once and shown once, stored hashed, revocable."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from daemon.cli import main


def spoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_create_prints_the_token_alone_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1")
    assert code == 0
    assert out.endswith("\n") and out.count("\n") == 1 and out.startswith("spk_")


def test_create_json_has_a_token_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = spoke(
        capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1", "--json"
    )
    assert json.loads(out)["token"].startswith("spk_")


def test_tokens_are_stored_hashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1")
    raw = (tmp_path / "uplink" / "tokens.db").read_bytes()
    assert out.strip().encode() not in raw
    db = sqlite3.connect(tmp_path / "uplink" / "tokens.db")
    assert out.strip() not in json.dumps(db.execute("SELECT * FROM tokens").fetchall())


def test_list_never_shows_tokens_and_revoke_marks_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, token = spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1")
    assert spoke(capsys, "tokens", "revoke", "--state-dir", str(tmp_path), "d1")[0] == 0
    _, out = spoke(capsys, "tokens", "list", "--state-dir", str(tmp_path), "--json")
    (listed,) = json.loads(out)
    assert listed["name"] == "d1" and listed["active"] is False
    assert token.strip() not in out


def test_a_duplicate_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1")
    assert spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1")[0] == 2


def test_revoking_an_unknown_token_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert spoke(capsys, "tokens", "revoke", "--state-dir", str(tmp_path), "nope")[0] == 2
