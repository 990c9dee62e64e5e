"""The appliance's software versions (Spoke, OS, kernel): read from the system, and each change
told once, so the hub's device page can show their history."""

from pathlib import Path

from daemon.versions import SystemVersions, changed_since_last_start, current, os_name

V1 = SystemVersions(spoke="0.1.0", os="Debian GNU/Linux 12 (bookworm)", kernel="6.1.0-18-amd64")


def test_os_name_is_the_pretty_name_of_os_release(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    assert os_name(release) == "Debian GNU/Linux 12 (bookworm)"
    assert current(release).os == "Debian GNU/Linux 12 (bookworm)"


def test_os_name_is_none_without_os_release_or_its_pretty_name(tmp_path: Path) -> None:
    assert os_name(tmp_path / "missing") is None
    (tmp_path / "bare").write_text("ID=debian\n")
    assert os_name(tmp_path / "bare") is None


def test_the_first_start_is_told_with_no_previous_versions(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    assert changed_since_last_start(path, V1) == {"from": None, "to": V1.model_dump()}
    assert SystemVersions.model_validate_json(path.read_text()) == V1


def test_a_start_with_the_same_versions_tells_nothing(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    changed_since_last_start(path, V1)
    assert changed_since_last_start(path, V1) is None


def test_an_os_update_is_told_once_with_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    changed_since_last_start(path, V1)
    v2 = V1.model_copy(update={"os": "Debian GNU/Linux 13 (trixie)", "kernel": "6.12.0-1"})
    assert changed_since_last_start(path, v2) == {"from": V1.model_dump(), "to": v2.model_dump()}
    assert changed_since_last_start(path, v2) is None


def test_an_unreadable_record_counts_as_a_first_start_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    path.write_text("{not json")
    assert changed_since_last_start(path, V1) == {"from": None, "to": V1.model_dump()}
    assert changed_since_last_start(path, V1) is None
