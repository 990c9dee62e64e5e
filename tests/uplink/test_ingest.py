"""POST /v1/images and GET /v1/images/{id}: the happy path and idempotency."""

from __future__ import annotations

import hashlib

from tests.uplink.conftest import Uplink, image_bytes


async def test_post_answers_202_with_the_sha256_id_and_a_location(uplink: Uplink) -> None:
    data = image_bytes()
    resp = await uplink.post(data)
    assert resp.status == 202
    body = await resp.json()
    assert body["id"] == hashlib.sha256(data).hexdigest()
    assert resp.headers["Location"] == body["location"] == f"/v1/images/{body['id']}"


async def test_result_has_labels_tiles_model_gps_and_timings(uplink: Uplink) -> None:
    data = image_bytes(gps=(47.5, 8.25), fmt="JPEG")
    body = await (await uplink.post(data, "image/jpeg", mission="m1", drone="d1")).json()
    result = await uplink.wait_done(body["id"])
    assert result["status"] == "done"
    assert result["model"]["name"] == "tiny" and result["model"]["version"] == "0.1.0"
    assert result["gps"]["latitude"] == 47.5 and result["gps"]["longitude"] == 8.25
    assert result["tiles"] and all(len(t["box"]) == 4 and t["probs"] for t in result["tiles"])
    assert set(result["probs"]) >= set(result["labels"])
    assert {"decode_s", "tile_s", "infer_s"} <= set(result["timings"])
    assert result["mission"] == "m1" and result["drone"] == "d1"


async def test_posting_the_same_image_twice_does_not_compute_it_again(uplink: Uplink) -> None:
    data = image_bytes(seed=3)
    first = await (await uplink.post(data)).json()
    await uplink.wait_done(first["id"])
    batches = uplink.metrics.registry.get_sample_value(
        "spoke_inference_batch_size_count", {"backend": "torch"}
    )
    again = await uplink.post(data)
    body = await again.json()
    assert again.status == 202 and body["id"] == first["id"] and body["duplicate"] is True
    assert body["status"] == "done"
    assert (
        uplink.metrics.registry.get_sample_value(
            "spoke_inference_batch_size_count", {"backend": "torch"}
        )
        == batches
    )


async def test_multipart_carries_mission_drone_and_capture_time(uplink: Uplink) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("mission", "flight-7")
    form.add_field("drone", "dji-3")
    form.add_field("captured_at", "2026-05-01T10:00:00+00:00")
    form.add_field("image", image_bytes(seed=4), content_type="image/png", filename="a.png")
    resp = await uplink.client.post("/v1/images", data=form, headers=uplink.auth)
    assert resp.status == 202, await resp.text()
    result = await uplink.wait_done((await resp.json())["id"])
    assert (result["mission"], result["drone"], result["captured_at"]) == (
        "flight-7",
        "dji-3",
        "2026-05-01T10:00:00+00:00",
    )


async def test_overlay_is_a_png(uplink: Uplink) -> None:
    body = await (await uplink.post(image_bytes(seed=5))).json()
    await uplink.wait_done(body["id"])
    resp = await uplink.client.get(f"/v1/images/{body['id']}/overlay.png", headers=uplink.auth)
    assert resp.status == 200 and resp.content_type == "image/png"
    assert (await resp.read()).startswith(b"\x89PNG")
