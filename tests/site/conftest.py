"""Fixtures: a real daemon (``spoke run --standalone --model``) in this process, a tiny model,
generated drone frames with EXIF GPS, and a mission posted through the real HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.config import ApiSection, DaemonConfig, HealthSection, UplinkSection
from daemon.app import Daemon, RunOptions
from daemon.state import StateDir
from tests.support.drone import post_frames

MISSION = "bridge-7-pier-2"
FRAMES = 5


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.artifact import write_artifact
    from models.config import tiny_config
    from models.vit import build_model

    out = tmp_path_factory.mktemp("model") / "tiny"
    # Low thresholds so the untrained tiny model "finds" defects to report on.
    labels = ("background", "crack", "spallation", "efflorescence", "exposed_bars",
              "corrosion_stain")
    write_artifact(build_model(tiny_config(), seed=0), out, name="tiny-vit", version="0.3.1",
                   thresholds={lab: 0.3 for lab in labels})
    return out


@pytest.fixture(scope="session")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from models.data.dataset import write_frames

    out = tmp_path_factory.mktemp("frames")
    rows = write_frames(out, domain=3, count=FRAMES, width=640, height=480)
    return [out / r.file for r in rows]


def pinned(state: Path) -> ssl.SSLContext:
    """Trust exactly the self-signed certificate a standalone daemon made for its API."""
    return ssl.create_default_context(cafile=str(state / "api" / "self-signed.crt"))


@dataclass
class Running:
    daemon: Daemon
    base: str
    token: str
    state: Path

    @property
    def tls(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(ssl=pinned(self.state))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
        async with aiohttp.ClientSession(connector=self.tls) as s, \
                s.get(self.base + path, **kwargs) as r:
            return r.status, await r.read(), r.headers

    async def post_frames(self, frames: list[Path], mission: str = MISSION) -> list[str]:
        async with aiohttp.ClientSession(headers=self.auth, connector=self.tls) as s:
            return await post_frames(s, self.base, frames, {"mission": mission, "drone": "m300-1"})


async def start_daemon(state: Path, model: Path | None, standalone: bool = True, **api: Any
                       ) -> tuple[Daemon, asyncio.Event, asyncio.Task[int]]:
    config = DaemonConfig(
        api=ApiSection(listen="127.0.0.1:0", **api),
        uplink=UplinkSection(backend="torch", workers=1),
        health=HealthSection(interval_s=1.0),
    )
    options = RunOptions(StateDir(state), trust_key=state / "none.pub", bundle=None,
                         boot_dir=state / "boot", model=model, standalone=standalone)
    state.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(options, config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    for _ in range(600):
        if getattr(daemon, "api", None) is not None and daemon.api.port:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return daemon, stop, task


@pytest.fixture
async def running(tmp_path: Path, model_dir: Path) -> AsyncIterator[Running]:
    daemon, stop, task = await start_daemon(tmp_path / "state", model_dir)
    base = f"https://127.0.0.1:{daemon.api.port}"
    _, token = daemon.uplink.tokens.create("inspector-tablet")
    run = Running(daemon, base, token, tmp_path / "state")
    for _ in range(600):  # until the model is loaded and one health reading exists
        status, _, _ = await run.get("/readyz")
        if status == 200 and daemon.health.latest is not None:
            break
        await asyncio.sleep(0.1)
    yield run
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def mission(running: Running, frames: list[Path]) -> list[str]:
    return await running.post_frames(frames)
