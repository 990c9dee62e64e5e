"""The hub operator's commands: init, bundle, serve's set-up errors."""

import stat
from pathlib import Path

from tests.support.fleet import cli


def init(home: Path) -> None:
    cli(
        "spoke-hub",
        "init",
        "--home",
        str(home),
        "--public-host",
        "hub.local",
        "--mqtt-port",
        "18883",
        "--http-port",
        "18443",
    )


def test_init_writes_private_keys_0600(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init(home)
    for key in ("ca/ca.key", "broker/server.key", "hub/hub.key", "signing/bundle.key"):
        assert stat.S_IMODE((home / key).stat().st_mode) == 0o600, key
    assert (home / "hub.toml").exists() and (home / "ca" / "ca.crt").exists()


def test_init_twice_refuses_and_keeps_the_keys(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init(home)
    before = (home / "ca" / "ca.key").read_bytes()
    proc = cli("spoke-hub", "init", "--home", str(home), "--public-host", "x", check=False)
    assert proc.returncode == 2
    assert "already holds a hub" in proc.stderr
    assert (home / "ca" / "ca.key").read_bytes() == before


def test_serve_without_mosquitto_says_how_to_install_it(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init(home)
    proc = cli(
        "spoke-hub",
        "serve",
        "--home",
        str(home),
        check=False,
        env={"PATH": str(tmp_path), "SPOKE_HUB_BROKER__MOSQUITTO": "no-such-mosquitto"},
    )
    assert proc.returncode == 2
    assert "apt-get install mosquitto" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_commands_on_a_missing_home_say_to_init(tmp_path: Path) -> None:
    proc = cli("spoke-hub", "devices", "--home", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2
    assert "spoke-hub init" in proc.stderr


def create_bundle_with(tmp_path: Path, *options: str) -> tuple[int, str]:
    """Run `bundle create` with ``options`` on a fresh hub home; return code and stderr."""
    home = tmp_path / "hub"
    init(home)
    proc = cli("spoke-hub", "bundle", "create", "--home", str(home), *options,
               "--out", str(tmp_path / "b.spoke"), check=False)
    return proc.returncode, proc.stderr


def test_bundle_with_bad_labels_is_refused(tmp_path: Path) -> None:
    code, err = create_bundle_with(tmp_path, "--labels", "site bad")
    assert code == 2 and "bad label" in err
    assert not (tmp_path / "b.spoke").exists()


def test_bundle_with_bad_expiry_is_refused(tmp_path: Path) -> None:
    code, err = create_bundle_with(tmp_path, "--expires", "soon")
    assert code == 2 and "not a duration" in err
    assert not (tmp_path / "b.spoke").exists()


def test_bundle_file_is_private(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init(home)
    out = tmp_path / "b.spoke"
    cli("spoke-hub", "bundle", "create", "--home", str(home), "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
