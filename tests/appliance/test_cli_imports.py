"""Status-like commands stay quick: they never import the ML stack."""

import subprocess
import sys
from pathlib import Path

from tests.support.fleet import REPO

PROBE = """
import sys
from {cli} import main
main({argv!r})
heavy = sorted(m for m in ("torch", "onnxruntime", "models") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def imported_after(cli: str, argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(cli=cli, argv=argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert marker, proc.stderr
    return marker[-1].removeprefix("HEAVY=")


def test_spoke_status_does_not_import_torch(tmp_path: Path) -> None:
    assert imported_after("daemon.cli", ["status", "--state-dir", str(tmp_path), "--json"]) == ""


def test_spoke_hub_devices_does_not_import_torch(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "provisioning",
            "init",
            "--home",
            str(home),
            "--public-host",
            "localhost",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    assert imported_after("provisioning.cli", ["devices", "--home", str(home), "--json"]) == ""
