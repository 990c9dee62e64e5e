"""The workbench's own data routes and the model-history routes, over real HTTP."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from daemon.web import workbench
from tests.workbench.conftest import Appliance

STATIC = Path(workbench.__file__).parent / "static"


async def get(app: Appliance, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers=app.auth) as s, s.get(app.base + path) as r:
        return r.status, await r.json()


async def test_review_puts_uncertain_tiles_first_and_filters(appliance: Appliance) -> None:
    status, everything = await get(appliance, "/workbench/api/review")
    assert status == 200 and everything["missions"][0]["mission"] == "bridge-7-pier-2"
    tiles = everything["tiles"]
    assert len(tiles) == everything["total"] == everything["matching"] > 0
    # Default order: uncertain first, the nearest to a threshold first among them.
    flags = [t["uncertain"] for t in tiles]
    assert flags == sorted(flags, reverse=True)
    unsure = [t["margin"] for t in tiles if t["uncertain"]]
    assert unsure == sorted(unsure)
    # Newest image first in the image list.
    received = [i["received_at"] for i in everything["images"]]
    assert received == sorted(received, reverse=True)

    _, band = await get(appliance, "/workbench/api/review?band=uncertain")
    assert band["tiles"] and all(t["uncertain"] for t in band["tiles"])
    _, sure = await get(appliance, "/workbench/api/review?band=confident")
    assert band["matching"] + sure["matching"] == everything["total"]
    assert all(not t["uncertain"] for t in sure["tiles"])

    await appliance.label_tiles(2, ["spallation"])
    _, left = await get(appliance, "/workbench/api/review?unreviewed=1")
    assert left["matching"] == everything["total"] - 2
    assert all(t["reviewed"] is None for t in left["tiles"])
    _, spall = await get(appliance, "/workbench/api/review?label=spallation")
    reviewed = [t for t in spall["tiles"] if t["reviewed"]]
    assert [t["reviewed"] for t in reviewed] == [["spallation"], ["spallation"]]
    assert all("spallation" in t["labels"] or t["reviewed"] for t in spall["tiles"])
    _, newest = await get(appliance, "/workbench/api/review?order=newest")
    assert newest["tiles"][0]["image_id"] == everything["images"][0]["id"]


async def test_review_refuses_a_bad_filter_with_its_reason(appliance: Appliance) -> None:
    status, body = await get(appliance, "/workbench/api/review?band=sometimes")
    assert status == 400 and body["reason"] == "band must be one of all, uncertain, confident"
    status, body = await get(appliance, "/workbench/api/review?order=random")
    assert status == 400 and "order must be one of" in body["reason"]


async def test_model_history_and_its_refusals(appliance: Appliance) -> None:
    status, models = await get(appliance, "/v1/models")
    assert status == 200
    roles = {m["version"]: m["role"] for m in models["entries"]}
    assert roles["1.1.0"].startswith("active") and roles["1.0.0"] == "previous"
    assert models["active"]["version"] == "1.1.0"
    async with aiohttp.ClientSession(headers=appliance.auth) as s:
        url = appliance.base + "/v1/models/activate"
        async with s.post(url, json={"version": "9.9.9"}) as r:
            body = await r.json()
            assert r.status == 404 and "have: " in body["reason"] and "1.0.0" in body["reason"]
        async with s.post(url, json={"version": "1.1.0"}) as r:
            assert r.status == 409 and (await r.json())["error"] == "already_active"
        async with s.post(url, json={}) as r:
            assert r.status == 400
    assert appliance.daemon.model_provider.current().version == "1.1.0"  # nothing changed


async def test_preview_is_a_small_jpeg_of_a_stored_image(appliance: Appliance) -> None:
    async with aiohttp.ClientSession(headers=appliance.auth) as s:
        async with s.get(f"{appliance.base}/workbench/api/images/{appliance.images[0]}"
                         "/preview.jpg") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
            assert (await r.read())[:2] == b"\xff\xd8"
        async with s.get(f"{appliance.base}/workbench/api/images/{appliance.images[0]}"
                         "/heat.jpg") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
            assert max(Image.open(io.BytesIO(await r.read())).size) <= 320
        async with s.get(f"{appliance.base}/workbench/api/images/{'0' * 64}/preview.jpg") as r:
            assert r.status == 404 and "never uploaded" in (await r.json())["reason"]


def test_own_script_and_style_stay_under_100_kb() -> None:
    total = sum(p.stat().st_size for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    assert 0 < total < 100_000, total
