"""``spoke-hub tokens``: operator tokens are printed once, stored hashed, and revocable."""

import json
from pathlib import Path

import pytest

from provisioning import operators
from provisioning.home import HubHome, init_home
from provisioning.registry import Registry
from tests.support.fleet import cli, free_port


@pytest.fixture
def home(tmp_path: Path) -> HubHome:
    h = HubHome(tmp_path / "hub")
    init_home(h, "localhost", free_port(), free_port())
    return h


def tokens(home: HubHome, *args: str, check: bool = True) -> str:
    proc = cli("spoke-hub", "tokens", *args, "--home", str(home.root), check=check)
    return proc.stdout if check else proc.stderr


def test_create_prints_the_token_once_and_stores_only_its_hash(home: HubHome) -> None:
    token = tokens(home, "create", "--name", "alice").strip()
    assert token.startswith("spk_") and len(token) > 40
    assert token.encode() not in home.registry.read_bytes()
    listed = json.loads(tokens(home, "list", "--json"))
    assert [(t["name"], t["active"]) for t in listed] == [("alice", True)]
    assert token not in json.dumps(listed)
    registry = Registry(home.registry)
    try:
        found = operators.verify(registry, token)
        assert found is not None and found.name == "alice"
    finally:
        registry.close()


def test_create_json_gives_the_token_and_its_id(home: HubHome) -> None:
    made = json.loads(tokens(home, "create", "--name", "prometheus", "--json"))
    assert made["token"].startswith("spk_") and made["name"] == "prometheus" and made["id"]


def test_a_taken_name_is_refused_and_the_first_token_still_works(home: HubHome) -> None:
    first = tokens(home, "create", "--name", "alice").strip()
    error = tokens(home, "create", "--name", "alice", check=False)
    assert "exists already" in error
    registry = Registry(home.registry)
    try:
        assert operators.verify(registry, first) is not None
    finally:
        registry.close()


def test_an_empty_name_is_refused(home: HubHome) -> None:
    assert "1 to 64 characters" in tokens(home, "create", "--name", "  ", check=False)


def test_revoke_by_name_marks_it_revoked(home: HubHome) -> None:
    token = tokens(home, "create", "--name", "alice").strip()
    assert "revoked" in tokens(home, "revoke", "alice")
    assert json.loads(tokens(home, "list", "--json"))[0]["active"] is False
    registry = Registry(home.registry)
    try:
        assert operators.verify(registry, token) is None
    finally:
        registry.close()


def test_revoking_an_unknown_token_says_how_to_find_one(home: HubHome) -> None:
    assert "spoke-hub tokens list" in tokens(home, "revoke", "bob", check=False)


def test_tokens_need_a_hub_home(tmp_path: Path) -> None:
    proc = cli("spoke-hub", "tokens", "list", "--home", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and "spoke-hub init" in proc.stderr
