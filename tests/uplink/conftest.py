"""Fixtures: the real aiohttp app with the uplink routes, a tiny model, real SQLite."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from appliance.config import ApiSection, UplinkSection
from daemon import compose
from daemon.api.server import ApiServer
from daemon.health import DaemonMetrics
from daemon.hub.outbox import Outbox
from daemon.uplink.provider import NoModel, StaticModel
from daemon.uplink.service import UplinkService
from models.artifact import Artifact
from models.backends import create_backend
from models.data.exif import CaptureInfo, make_exif

MAX_UPLOAD = 256 * 1024


def image_bytes(
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    fmt: str = "PNG",
    gps: tuple[float, float] | None = None,
) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if gps is not None:
        info = CaptureInfo(gps[0], gps[1], 30.0, datetime(2026, 5, 1, 10, 0, seed % 60, tzinfo=UTC))
        kwargs["exif"] = make_exif(info)
    Image.fromarray(pixels).save(out, fmt, **kwargs)
    return out.getvalue()


@dataclass
class Uplink:
    client: TestClient
    service: UplinkService
    token: str
    outbox: Outbox
    metrics: DaemonMetrics

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(self, data: bytes, content_type: str = "image/png", **query: str) -> Any:
        return await self.client.post(
            "/v1/images",
            data=data,
            params=query,
            headers={**self.auth, "Content-Type": content_type},
        )

    async def wait_done(self, image_id: str, timeout: float = 30.0) -> dict[str, Any]:
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            resp = await self.client.get(f"/v1/images/{image_id}", headers=self.auth)
            body: dict[str, Any] = await resp.json()
            if body["status"] in ("done", "failed"):
                return body
            if loop.time() > deadline:
                raise AssertionError(f"image {image_id} still {body['status']}")
            await asyncio.sleep(0.05)

    def dropped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "spoke_inputs_dropped_total", {"reason": reason}
        )
        return value or 0.0


MakeUplink = Callable[..., "AsyncIterator[Uplink]"]


@pytest.fixture(scope="session")
def tiny_backend(tiny_artifact: Artifact) -> Any:
    """One torch backend for the session: tests run one at a time, so sharing it is safe."""
    return create_backend(tiny_artifact, "torch")


@pytest.fixture
def tiny_provider(tiny_artifact: Artifact, tiny_backend: Any) -> StaticModel:
    return StaticModel.of(tiny_artifact, tiny_backend)


@pytest.fixture
async def make_uplink(
    tmp_path: Path, aiohttp_client: Any, tiny_provider: StaticModel
) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[UplinkService, Outbox]] = []

    async def make(provider: Any = None, root: Path | None = None, **config: Any) -> Uplink:
        root = root or tmp_path / "uplink"
        metrics = DaemonMetrics()
        outbox = Outbox(root.parent / "outbox.db")
        server = ApiServer(ApiSection(max_upload_bytes=MAX_UPLOAD), metrics.exposition)
        service = compose.uplink(
            server.app, root, UplinkSection(**config),
            tiny_provider if provider is None else provider, MAX_UPLOAD, metrics, outbox,
        ).service
        _, token = service.tokens.create(f"test-{len(started)}")
        await service.start()
        started.append((service, outbox))
        client = await aiohttp_client(server.app)
        return Uplink(client, service, token, outbox, metrics)

    yield make
    for service, outbox in started:
        await service.stop()
        outbox.close()


@pytest.fixture
async def uplink(make_uplink: Callable[..., Any]) -> Uplink:
    result: Uplink = await make_uplink()
    return result


__all__ = ["NoModel", "Uplink", "image_bytes", "web"]
