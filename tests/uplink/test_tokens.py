"""``spoke tokens``: created once and shown once, stored hashed, revocable."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.uplink.tokens import TokenStore, token_hash


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


def test_create_with_expires_sets_the_end_and_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = spoke(capsys, "tokens", "create", "--state-dir", str(tmp_path), "--name", "d1",
                   "--expires", "30d", "--json")
    made = json.loads(out)
    assert made["expires_at"] == pytest.approx(made["created_at"] + 30 * 86400)
    _, listed = spoke(capsys, "tokens", "list", "--state-dir", str(tmp_path))
    assert "d1" in listed and time.strftime("%Y-%m-%d", time.gmtime(made["expires_at"])) in listed


def test_a_bad_expiry_is_refused_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("30", "soon", "0d"):
        code = main(["tokens", "create", "--state-dir", str(tmp_path), "--name", "d1",
                     "--expires", bad])
        assert code == 2, bad
    capsys.readouterr()
    _, out = spoke(capsys, "tokens", "list", "--state-dir", str(tmp_path), "--json")
    assert json.loads(out) == []


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    _, token = store.create("d1", expires_in_s=0.05)
    assert store.verify(token) == "d1"
    time.sleep(0.1)
    assert store.verify(token) is None
    assert store.all()[0].state() == "expired"


def test_an_offered_token_unused_past_its_offer_is_withdrawn(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    _, token = store.create("tablet", unused_until=time.time() - 1)
    assert store.verify(token) is None
    assert store.all()[0].state() == "withdrawn"


def test_an_offered_token_used_in_time_keeps_working_after_the_offer(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    _, token = store.create("tablet", unused_until=time.time() + 0.2)
    assert store.verify(token) == "tablet"  # the app's first image, within the window
    time.sleep(0.3)
    assert store.verify(token) == "tablet"
    assert store.all()[0].first_used_at is not None


def test_a_token_table_from_before_expiry_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
                " sha256 TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL)")
    old.execute("INSERT INTO tokens VALUES ('i1', 'old', ?, 1.0, NULL)", (token_hash("spk_x"),))
    old.commit()
    old.close()
    store = TokenStore(path)
    assert store.verify("spk_x") == "old"
    assert store.all()[0].expires_at is None
