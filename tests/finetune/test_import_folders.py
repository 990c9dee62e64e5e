"""``spoke samples import DIR`` with one folder per label (``DIR/<label>/*.png``)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.finetune.conftest import Site, png
from tests.support.fleet import cli


def make_set(root: Path, folders: dict[str, int], seed: int = 0) -> Path:
    for i, (name, count) in enumerate(folders.items()):
        (root / name).mkdir(parents=True)
        for k in range(count):
            (root / name / f"{k}.png").write_bytes(png(seed + 100 * i + k))
    return root


def listing(site: Site) -> dict:
    return json.loads(cli("spoke", "samples", "list", "--state-dir", str(site.state),
                          "--json").stdout)


def stored_before(site: Site, tmp_path: Path) -> list[str]:
    """One sample already stored, so a refusal can be seen to keep it."""
    make_set(tmp_path / "first", {"crack": 2}, seed=900)
    cli("spoke", "samples", "import", str(tmp_path / "first"), "--state-dir", str(site.state))
    return sorted(r["id"] for r in listing(site)["items"])


def test_each_folder_is_a_label(site: Site, tmp_path: Path):
    root = make_set(tmp_path / "set", {"background": 3, "crack": 4})
    out = cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state), "--json")
    added = json.loads(out.stdout)["added"]
    assert len(added) == 7
    counts = listing(site)["label_counts"]
    assert counts == {"background": 3, "crack": 4}


def test_map_renames_a_folder_to_a_label(site: Site, tmp_path: Path):
    root = make_set(tmp_path / "set", {"healthy": 2, "salt_damage": 3})
    cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state),
        "--map", "healthy=background", "--map", "salt_damage=crack")
    assert listing(site)["label_counts"] == {"background": 2, "crack": 3}


def test_a_bad_folder_name_refuses_the_import_and_keeps_what_is_stored(site: Site,
                                                                      tmp_path: Path):
    before = stored_before(site, tmp_path)
    root = make_set(tmp_path / "set", {"background": 2, "Crack!": 2})
    proc = cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state),
               check=False)
    assert proc.returncode == 2
    assert "'Crack!' is not a label name" in proc.stderr and "rename the folder" in proc.stderr
    assert sorted(r["id"] for r in listing(site)["items"]) == before


def test_an_unknown_label_folder_refuses_the_import_and_keeps_what_is_stored(site: Site,
                                                                           tmp_path: Path):
    before = stored_before(site, tmp_path)
    root = make_set(tmp_path / "set", {"background": 2, "graffiti": 2})
    proc = cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state),
               check=False)
    assert proc.returncode == 2
    assert f"{root / 'graffiti'}: unknown label(s) graffiti" in proc.stderr
    assert "--new-label" in proc.stderr and "nothing was imported" in proc.stderr
    assert sorted(r["id"] for r in listing(site)["items"]) == before
    cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state), "--new-label")
    assert listing(site)["label_counts"]["graffiti"] == 2


def test_an_empty_class_folder_is_refused_by_name(site: Site, tmp_path: Path):
    root = make_set(tmp_path / "set", {"background": 2})
    (root / "crack").mkdir()
    proc = cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state),
               check=False)
    assert proc.returncode == 2 and f"{root / 'crack'}: no images" in proc.stderr
    assert listing(site)["items"] == []


def test_a_map_without_an_equals_sign_is_refused(site: Site, tmp_path: Path):
    root = make_set(tmp_path / "set", {"background": 2})
    proc = cli("spoke", "samples", "import", str(root), "--state-dir", str(site.state),
               "--map", "healthy", check=False)
    assert proc.returncode == 2 and "FOLDER=LABEL" in proc.stderr
    assert listing(site)["items"] == []
