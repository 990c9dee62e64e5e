"""``spoke report`` and ``spoke pair`` run on the appliance's console: no ML stack imported."""

from pathlib import Path

from tests.appliance.test_cli_imports import imported_after


def test_spoke_report_and_pair_do_not_import_torch(tmp_path: Path) -> None:
    assert imported_after("daemon.cli", ["report", "m", "--state-dir", str(tmp_path)]) == ""
    assert imported_after("daemon.cli", ["pair", "--state-dir", str(tmp_path)]) == ""
