"""Each bad case gets its own answer, is counted, and leaves no work behind."""

from __future__ import annotations

import struct
import zlib
from typing import Any

from daemon.uplink.provider import NoModel
from tests.support.wait import eventually
from tests.uplink.conftest import MAX_UPLOAD, Uplink, image_bytes


async def _stored(uplink: Uplink) -> int:
    rows, _ = await uplink.service.query("page", limit=500)
    return len(rows)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


async def test_missing_token_is_401_and_nothing_is_stored(uplink: Uplink) -> None:
    resp = await uplink.client.post(
        "/v1/images", data=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await _stored(uplink) == 0


async def test_wrong_token_is_401_and_nothing_is_stored(uplink: Uplink) -> None:
    resp = await uplink.client.post(
        "/v1/images",
        data=image_bytes(),
        headers={"Content-Type": "image/png", "Authorization": "Bearer spk_not-a-real-token"},
    )
    assert resp.status == 401
    assert await _stored(uplink) == 0


async def test_revoked_token_is_401_at_once(uplink: Uplink) -> None:
    uplink.service.tokens.revoke("test-0")
    resp = await uplink.post(image_bytes())
    assert resp.status == 401


async def test_reads_need_a_token_too(uplink: Uplink) -> None:
    for path in (
        "/v1/images",
        "/v1/images/" + "0" * 64,
        "/v1/missions/m1",
        "/v1/missions/m1.geojson",
        "/v1/images/" + "0" * 64 + "/overlay.png",
    ):
        assert (await uplink.client.get(path)).status == 401, path


async def test_unsupported_type_is_415(uplink: Uplink) -> None:
    resp = await uplink.post(b"hello", "text/plain")
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_type"
    assert uplink.dropped("unsupported_type") == 1


async def test_body_over_the_limit_is_413(uplink: Uplink) -> None:
    resp = await uplink.post(b"\xff" * (MAX_UPLOAD + 1), "image/jpeg")
    assert resp.status == 413
    assert uplink.dropped("too_large") == 1


async def test_streamed_body_over_the_limit_is_413_without_a_length(uplink: Uplink) -> None:
    async def body() -> Any:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\xff" * 65536

    resp = await uplink.client.post(
        "/v1/images", data=body(), headers={**uplink.auth, "Content-Type": "image/jpeg"}
    )
    assert resp.status == 413


async def test_corrupt_image_is_422_with_the_decoders_reason(uplink: Uplink) -> None:
    from models.errors import ImageError
    from models.images import decode_image

    garbage = b"\x89PNG\r\n\x1a\n" + b"garbage" * 50
    try:
        decode_image(garbage)
    except ImageError as exc:
        expected = str(exc)
    resp = await uplink.post(garbage, "image/png")
    assert resp.status == 422
    assert await resp.json() == {"error": "corrupt", "reason": expected}
    assert await _stored(uplink) == 0


async def test_truncated_jpeg_is_422_and_says_truncated(uplink: Uplink) -> None:
    data = image_bytes(fmt="JPEG")
    resp = await uplink.post(data[: len(data) // 2], "image/jpeg")
    assert resp.status == 422
    assert "truncated" in (await resp.json())["reason"]


async def test_empty_body_is_422(uplink: Uplink) -> None:
    resp = await uplink.post(b"", "image/png")
    assert resp.status == 422
    assert (await resp.json())["error"] == "empty"


async def test_decompression_bomb_is_413_before_decoding(uplink: Uplink) -> None:
    resp = await uplink.post(_png_header_only(60_000, 60_000), "image/png")
    assert resp.status == 413
    assert "before decoding" in (await resp.json())["reason"]
    assert uplink.dropped("too_large") == 1


async def test_full_queue_is_429_with_retry_after(make_uplink: Any) -> None:
    uplink: Uplink = await make_uplink(provider=NoModel(), queue_depth=2)
    for seed in (1, 2):
        assert (await uplink.post(image_bytes(seed=seed))).status == 202
    resp = await uplink.post(image_bytes(seed=3))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert uplink.service.queue_depth() == 2
    assert uplink.dropped("queue_full") == 1


async def test_bad_metadata_is_400(uplink: Uplink) -> None:
    resp = await uplink.post(image_bytes(), mission="../../etc")
    assert resp.status == 400
    resp = await uplink.post(image_bytes(), captured_at="yesterday")
    assert resp.status == 400


async def test_multipart_without_an_image_is_400(uplink: Uplink) -> None:
    import aiohttp

    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("mission", "m")
    form.add_field("other", "x")
    resp = await uplink.client.post("/v1/images", data=form, headers=uplink.auth)
    assert resp.status == 400


async def test_multipart_image_of_another_type_is_415(uplink: Uplink) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", b"GIF89a....", content_type="image/gif", filename="x.gif")
    resp = await uplink.client.post("/v1/images", data=form, headers=uplink.auth)
    assert resp.status == 415


async def test_unknown_image_is_404(uplink: Uplink) -> None:
    resp = await uplink.client.get("/v1/images/" + "a" * 64, headers=uplink.auth)
    assert resp.status == 404


async def test_uploads_in_flight_count_against_the_queue(make_uplink: Any) -> None:
    """Memory stays bounded: a body being read holds a queue slot, so with every slot taken
    by slow uploads the next request is refused before its body is read."""
    import asyncio

    uplink: Uplink = await make_uplink(provider=NoModel(), queue_depth=1)
    release = asyncio.Event()
    data = image_bytes(seed=8)

    async def slow_body() -> Any:
        yield data[:100]
        await release.wait()
        yield data[100:]

    first = asyncio.create_task(
        uplink.client.post(
            "/v1/images", data=slow_body(), headers={**uplink.auth, "Content-Type": "image/png"}
        )
    )
    async def slot_held() -> bool:
        return uplink.service.uploads_in_flight() == 1

    await eventually(slot_held, 10, "the slow upload to hold its queue slot", 0.02)
    second = await uplink.post(image_bytes(seed=9))
    assert second.status == 429
    release.set()
    assert (await first).status == 202
