"""Frames posted to a running uplink as a drone app posts them, each waited for until it is
processed: the site and workbench fixtures share this."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support.wait import eventually


async def post_frames(session: aiohttp.ClientSession, base: str, frames: list[Path],
                      fields: dict[str, str]) -> list[str]:
    """POST each JPEG to ``base/v1/images`` with the form ``fields`` (mission, drone...); the
    image ids, once every one of them is done or failed."""
    ids: list[str] = []
    for path in frames:
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("image", path.read_bytes(), filename=path.name, content_type="image/jpeg")
        async with session.post(base + "/v1/images", data=form) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    for image_id in ids:
        async def processed(image_id: str = image_id) -> bool:
            async with session.get(f"{base}/v1/images/{image_id}") as r:
                return (await r.json())["status"] in ("done", "failed")

        await eventually(processed, 30, f"image {image_id} to be processed", 0.05)
    return ids
