"""Samples through the API (a tile of an uploaded image) and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.config import ApiSection
from daemon.api.server import ApiServer
from daemon.finetune.api import FinetuneApi
from tests.finetune.conftest import TOKEN, Site, png
from tests.support.fleet import REPO, cli


async def test_a_sample_can_be_a_tile_of_an_uploaded_image(site: Site, aiohttp_client: Any):
    uploaded = {"a" * 64: png(5, size=64)}

    async def fetch(image_id: str) -> bytes | None:
        return uploaded.get(image_id)

    server = ApiServer(ApiSection())
    FinetuneApi(site.service, lambda t: "t" if t == TOKEN else None, fetch).install(server.app)
    client = await aiohttp_client(server.app)
    body = {"image_id": "a" * 64, "box": [8, 16, 40, 48], "labels": ["crack"]}
    resp = await client.post("/v1/samples", json=body, headers=site.auth)
    got = await resp.json()
    assert resp.status == 201, got
    assert (got["sample"]["width"], got["sample"]["height"]) == (32, 32)
    assert got["sample"]["origin"] == {"image_id": "a" * 64, "box": [8, 16, 40, 48]}
    resp = await client.post("/v1/samples", json=body | {"box": [0, 0, 65, 10]},
                             headers=site.auth)
    assert resp.status == 422 and "not inside" in (await resp.json())["reason"]
    resp = await client.post("/v1/samples", json=body | {"image_id": "b" * 64},
                             headers=site.auth)
    assert resp.status == 404
    resp = await client.post("/v1/samples", json=body)
    assert resp.status == 401


def test_import_reports_bad_rows_and_imports_the_rest(site: Site, site_tiles: Path,
                                                      tmp_path: Path):
    tiles = tmp_path / "set"
    shutil.copytree(site_tiles, tiles)
    (tiles / "tile_000000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = (tiles / "labels.csv").read_text().splitlines()
    rows[2] = rows[2].split(",")[0] + ",graffiti"
    (tiles / "labels.csv").write_text("\n".join(rows) + "\n")
    state = str(site.state)
    proc = cli("spoke", "samples", "import", str(tiles), "--state-dir", state, check=False)
    assert proc.returncode == 1
    assert "tile_000000.png" in proc.stderr and "unusable" in proc.stderr
    assert "graffiti" in proc.stderr and "--new-label" in proc.stderr
    listing = json.loads(cli("spoke", "samples", "list", "--state-dir", state, "--json").stdout)
    assert len(listing["items"]) == 30
    assert listing["model"] == "crack-vit@1.0.0"


def test_finetune_start_says_when_no_daemon_runs(site: Site):
    proc = cli("spoke", "finetune", "start", "--state-dir", str(site.state), check=False)
    assert proc.returncode == 2 and "no daemon is running" in proc.stderr


def test_spoke_samples_list_does_not_import_torch(site: Site):
    probe = ("import sys\nfrom daemon.cli import main\n"
             f"main(['samples', 'list', '--state-dir', {str(site.state)!r}, '--json'])\n"
             "print('HEAVY=' + ','.join(m for m in ('torch', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    assert out.strip().splitlines()[-1] == "HEAVY="
