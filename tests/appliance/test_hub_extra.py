"""The appliance runs without the hub's packages (the `hub` extra its image leaves out), and
``spoke-hub`` without them says which extra to install."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from provisioning.cli import HUB_PACKAGES
from tests.support.fleet import REPO

#: Makes every hub package unimportable, as on an appliance (``None`` in ``sys.modules`` turns
#: ``import x`` into ModuleNotFoundError).
WITHOUT_HUB = "import sys\nfor name in {packages!r}:\n    sys.modules[name] = None\n"

IMPORT_ALL = """
import importlib, pkgutil
failed, imported = [], 0
for package in ("appliance", "daemon", "models"):
    for info in pkgutil.walk_packages([package], prefix=package + "."):
        if info.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(info.name)
            imported += 1
        except ModuleNotFoundError as exc:
            failed.append(f"{info.name}: {exc}")
print(f"IMPORTED={imported}")
print("FAILED=" + "; ".join(failed))
"""


def run_without_hub(code: str) -> subprocess.CompletedProcess[str]:
    prelude = WITHOUT_HUB.format(packages=sorted(HUB_PACKAGES))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_every_appliance_module_imports_without_the_hub_packages() -> None:
    proc = run_without_hub(IMPORT_ALL)
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED=")]
    assert marker, proc.stderr
    assert marker[-1] == "FAILED="
    imported = int(proc.stdout.split("IMPORTED=")[1].split()[0])
    assert imported > 150, proc.stdout  # the walk found the packages, not an empty list


def test_spoke_hub_without_its_packages_names_the_extra(tmp_path: Path) -> None:
    proc = run_without_hub(
        "from provisioning.cli import main\n"
        f"raise SystemExit(main(['devices', '--home', {str(tmp_path)!r}]))\n"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "spoke-hub: error: sqlalchemy is not installed: the hub's packages are the 'hub' "
        "extra (pip install 'spoke[hub]')"
    )


def test_the_hub_packages_are_not_core_dependencies() -> None:
    """What the appliance image installs is the project without extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {Requirement(dep).name for dep in project["dependencies"]}
    hub = {Requirement(dep).name for dep in project["optional-dependencies"]["hub"]}
    assert hub == {"sqlalchemy", "psycopg", "boto3"}
    assert not core & hub
