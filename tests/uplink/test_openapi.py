"""Schemathesis against /v1/openapi.json: every answer the API gives is one it documents."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from appliance.config import ApiSection, UplinkSection
from daemon import compose
from daemon.api.server import ApiServer
from daemon.uplink.openapi import openapi_document
from daemon.uplink.provider import StaticModel
from models.artifact import Artifact
from models.backends import create_backend
from tests.support.fleet import free_port
from tests.uplink.conftest import MAX_UPLOAD, image_bytes

schema = schemathesis.openapi.from_dict(openapi_document())
# Schemathesis has no built-in serializer for image/tiff bodies; JPEG and PNG cover raw uploads.
pytestmark = pytest.mark.filterwarnings("ignore:Skipped test cases with unsupported payload")
CHECKS = (status_code_conformance, content_type_conformance, response_schema_conformance)


class LiveUplink:
    """The real app on a real port, its loop on a thread: schemathesis calls it over HTTP."""

    def __init__(self, root: Path, artifact: Artifact) -> None:
        self.root, self.artifact = root, artifact
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.token = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        provider = StaticModel.of(self.artifact, create_backend(self.artifact, "torch"))
        self.server = ApiServer(
            ApiSection(listen=f"127.0.0.1:{self.port}", max_upload_bytes=MAX_UPLOAD)
        )
        self.service = compose.uplink(self.server.app, self.root, UplinkSection(), provider,
                                      MAX_UPLOAD).service
        _, self.token = self.service.tokens.create("schemathesis")
        await self.service.start()
        await self.server.start()

    async def _stop(self) -> None:
        await self.server.stop()
        await self.service.stop()

    def __enter__(self) -> LiveUplink:
        self.thread.start()
        assert self.ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: Artifact) -> Iterator[LiveUplink]:
    with LiveUplink(tmp_path_factory.mktemp("live") / "uplink", tiny_artifact) as server:
        # One known image and mission, so the generated reads also find something.
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v1/images?mission=m1",
            data=image_bytes(),
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {server.token}"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        yield server


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: Any, live: LiveUplink) -> None:
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{live.port}",
        headers={"Authorization": f"Bearer {live.token}"},
        checks=CHECKS,
    )


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_without_a_token_is_a_documented_401(case: Any, live: LiveUplink) -> None:
    response = case.call(base_url=f"http://127.0.0.1:{live.port}")
    documented = case.method.lower() in openapi_document()["paths"][case.path]
    if not documented:  # schemathesis also tries methods a path does not have
        assert response.status_code == 405
    elif case.path != "/readyz":
        assert response.status_code == 401
    case.validate_response(response, checks=CHECKS)
