"""Listing, missions, GeoJSON, readiness, events for the hub, retention."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.uplink.provider import NoModel
from models.artifact import Artifact
from tests.uplink.conftest import Uplink, image_bytes


async def _post_done(uplink: Uplink, seed: int, **query: str) -> dict[str, Any]:
    data = image_bytes(seed=seed, fmt="JPEG", gps=(46.0 + seed / 1000, 7.0))
    body = await (await uplink.post(data, "image/jpeg", **query)).json()
    return await uplink.wait_done(body["id"])


@pytest.fixture
def low_thresholds(tiny_artifact: Artifact) -> Iterator[None]:
    """Every label at 0: a random tiny model then 'finds' every defect, deterministically."""
    card = tiny_artifact.card
    saved = card.thresholds
    object.__setattr__(card, "thresholds", {lab: 0.0 for lab in card.labels})
    yield
    object.__setattr__(card, "thresholds", saved)


async def test_list_is_paginated_with_a_cursor(uplink: Uplink) -> None:
    ids = [(await _post_done(uplink, seed))["id"] for seed in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (
            await uplink.client.get("/v1/images", params=params, headers=uplink.auth)
        ).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


async def test_list_filters_by_mission_label_and_since(
    uplink: Uplink, low_thresholds: None
) -> None:
    a = await _post_done(uplink, 1, mission="north")
    await _post_done(uplink, 2, mission="south")
    get = uplink.client.get
    page = await (await get("/v1/images", params={"mission": "north"}, headers=uplink.auth)).json()
    assert [i["id"] for i in page["items"]] == [a["id"]]
    page = await (await get("/v1/images", params={"label": "crack"}, headers=uplink.auth)).json()
    assert len(page["items"]) == 2
    page = await (
        await get("/v1/images", params={"since": str(time.time() + 60)}, headers=uplink.auth)
    ).json()
    assert page["items"] == []


async def test_bad_cursor_is_400(uplink: Uplink) -> None:
    resp = await uplink.client.get("/v1/images", params={"cursor": "bm9wZQ"}, headers=uplink.auth)
    assert resp.status == 400


async def test_mission_summary_counts_labels_and_lists_defects_with_gps(
    uplink: Uplink, low_thresholds: None
) -> None:
    for seed in (1, 2, 3):
        await _post_done(uplink, seed, mission="m7")
    summary = await (await uplink.client.get("/v1/missions/m7", headers=uplink.auth)).json()
    assert summary["images"] == 3 and summary["processed"] == 3
    assert summary["label_counts"]["crack"] == 3
    assert len(summary["defects"]) == 3
    assert all(d["gps"]["latitude"] > 46 for d in summary["defects"])


async def test_mission_geojson_is_a_feature_collection_of_points(
    uplink: Uplink, low_thresholds: None
) -> None:
    done = await _post_done(uplink, 4, mission="m8")
    resp = await uplink.client.get("/v1/missions/m8.geojson", headers=uplink.auth)
    assert resp.status == 200 and resp.content_type == "application/geo+json"
    doc = json.loads(await resp.text())
    assert doc["type"] == "FeatureCollection"
    (feature,) = doc["features"]
    assert feature["geometry"]["type"] == "Point"
    lon, lat = feature["geometry"]["coordinates"][:2]
    assert (lat, lon) == (done["gps"]["latitude"], done["gps"]["longitude"])
    assert "background" not in feature["properties"]["labels"]


async def test_unknown_mission_is_404(uplink: Uplink) -> None:
    resp = await uplink.client.get("/v1/missions/nope", headers=uplink.auth)
    assert resp.status == 404


async def test_readyz_is_ready_only_while_a_model_is_active(make_uplink: Any) -> None:
    with_model: Uplink = await make_uplink()
    resp = await with_model.client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["model"]["name"] == "tiny"
    without: Uplink = await make_uplink(
        provider=NoModel(), root=with_model.service.root.parent / "other"
    )
    assert (await without.client.get("/readyz")).status == 503


async def test_images_wait_for_a_model_and_then_run(make_uplink: Any, tiny_provider: Any) -> None:
    from daemon.uplink.provider import StaticModel

    late = StaticModel(tiny_provider.model_dir)
    uplink: Uplink = await make_uplink(provider=late)
    body = await (await uplink.post(image_bytes(seed=9))).json()
    got = await (await uplink.client.get(body["location"], headers=uplink.auth)).json()
    assert got["status"] == "queued"
    late.model = tiny_provider.model
    assert (await uplink.wait_done(body["id"]))["status"] == "done"


async def test_each_processed_image_puts_a_compact_event_in_the_outbox(uplink: Uplink) -> None:
    done = await _post_done(uplink, 5, mission="m9", drone="d2")
    events = uplink.outbox.pending()
    assert [e.kind for e in events] == ["detection"]
    event = events[0].data
    assert event["image"] == done["id"] and event["mission"] == "m9"
    assert event["labels"] == done["labels"]
    assert set(event["max_probs"]) == set(done["probs"])
    assert event["gps"]["latitude"] == done["gps"]["latitude"]
    assert event["model"] == {"name": "tiny", "version": "0.1.0"}


async def test_events_carry_no_image_bytes_unless_export_is_enabled(make_uplink: Any) -> None:
    plain: Uplink = await make_uplink()
    await _post_done(plain, 6)
    (event,) = plain.outbox.pending()
    payload = event.model_dump_json()
    assert len(payload) < 2000 and "thumbnail" not in payload
    exporting: Uplink = await make_uplink(
        root=plain.service.root.parent / "exp" / "uplink", export="thumbnail"
    )
    await _post_done(exporting, 7)
    (event,) = exporting.outbox.pending()
    assert "thumbnail_jpeg_b64" in event.data


async def test_retention_deletes_processed_images_oldest_first(make_uplink: Any) -> None:
    uplink: Uplink = await make_uplink(provider=NoModel(), retention_max_bytes=1)
    queued = await (await uplink.post(image_bytes(seed=1))).json()
    assert await uplink.service.sweep() == []  # unprocessed: never deleted
    store = uplink.service.store
    assert store is not None
    await uplink.service.db(
        store.mark_done, queued["id"], {"labels": [], "probs": {}, "tiles": [], "timings": {}}
    )
    assert await uplink.service.sweep() == [queued["id"]]
    row = await uplink.service.query("get", queued["id"])
    assert row["stored"] == 0 and not store.image_path(row).exists()


async def test_retention_deletes_by_age_keeping_the_young(make_uplink: Any) -> None:
    uplink: Uplink = await make_uplink(provider=NoModel())
    store = uplink.service.store
    assert store is not None
    ids = []
    for seed in (1, 2):
        body = await (await uplink.post(image_bytes(seed=seed))).json()
        await uplink.service.db(store.mark_done, body["id"], {"labels": []})
        ids.append(body["id"])
    await uplink.service.db(
        store.db.execute, "UPDATE images SET received_at = 0 WHERE id = ?", [ids[0]]
    )
    removed = await uplink.service.db(store.sweep, 10**9, 3600.0)
    assert removed == [ids[0]]


async def test_overlay_after_retention_is_410(make_uplink: Any) -> None:
    uplink: Uplink = await make_uplink(retention_max_bytes=1)
    done = await _post_done(uplink, 8)
    await uplink.service.sweep()
    resp = await uplink.client.get(done["overlay"], headers=uplink.auth)
    assert resp.status == 410
