"""Fixtures: a real daemon (``spoke run``, not enrolled, its model store seeded with two tiny
models) with a mission posted through the real API, and the system Chromium driven by
Playwright (``executable_path``: nothing is downloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.config import (
    ApiSection,
    DaemonConfig,
    FinetuneSection,
    HealthSection,
    ModelsSection,
    UplinkSection,
)
from appliance.fsutil import write_secret
from appliance.identity import generate_key, key_to_pem
from daemon.app import Daemon, RunOptions
from daemon.state import StateDir
from tests.support.drone import post_frames

MISSION = "bridge-7-pier-2"
FRAMES = 3
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORTS = {"phone": (390, 844), "tablet": (820, 1180), "laptop": (1366, 768)}
FAST_FINETUNE = FinetuneSection(threads=1, niceness=5, default_budget_s=30, margin=0.0,
                                max_label_drop=1.0, checkpoint_every_s=60)

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="chromium (Debian package) missing")


@pytest.fixture(scope="session")
def parents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """crack-vit 1.0.0 and 1.1.0: tiny, untrained, thresholds 0.5 (many uncertain tiles)."""
    from models.artifact import write_artifact
    from models.config import tiny_config
    from models.vit import build_model

    root = tmp_path_factory.mktemp("parents")
    out = []
    for seed, version in ((0, "1.0.0"), (1, "1.1.0")):
        path = root / version
        write_artifact(build_model(tiny_config(), seed=seed), path, name="crack-vit",
                       version=version)
        out.append(path)
    return out[0], out[1]


@pytest.fixture(scope="session")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from models.data.dataset import write_frames

    out = tmp_path_factory.mktemp("frames")
    rows = write_frames(out, domain=3, count=FRAMES, width=192, height=128)
    return [out / r.file for r in rows]


@dataclass
class Appliance:
    daemon: Daemon
    base: str
    token: str
    state: Path
    images: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def samples(self) -> list[dict[str, Any]]:
        svc = self.daemon.finetune
        assert svc.samples is not None
        return await svc.db(svc.samples.rows)

    async def label_tiles(self, count: int, labels: list[str]) -> None:
        """Label ``count`` tiles through the REST API, cycling through ``labels``."""
        async with aiohttp.ClientSession(headers=self.auth) as s:
            async with s.get(self.base + "/workbench/api/review") as r:
                tiles = (await r.json())["tiles"][:count]
            for i, tile in enumerate(tiles):
                body = {"image_id": tile["image_id"], "box": tile["box"],
                        "labels": [labels[i % len(labels)]]}
                async with s.post(self.base + "/v1/samples", json=body) as r:
                    assert r.status in (200, 201), await r.text()

    async def post_frames(self, frames: list[Path]) -> list[str]:
        async with aiohttp.ClientSession(headers=self.auth) as s:
            return await post_frames(s, self.base, frames, {"mission": MISSION})


def seed_models(state: Path, parents: tuple[Path, Path]) -> None:
    """Both versions in the store, 1.1.0 current and committed, as delivery leaves it."""
    from tests.finetune.conftest import seed_store

    write_secret(state / "identity" / "device.key", key_to_pem(generate_key()))
    for artifact in parents:
        seed_store(state, artifact)


@pytest.fixture
def finetune_section() -> FinetuneSection:
    """The daemon's ``[finetune]`` section (a test module may override this fixture)."""
    return FAST_FINETUNE


@pytest.fixture
async def appliance(tmp_path: Path, parents: tuple[Path, Path], frames: list[Path],
                    finetune_section: FinetuneSection) -> AsyncIterator[Appliance]:
    state = tmp_path / "state"
    seed_models(state, parents)
    config = DaemonConfig(
        # Plain HTTP by name: these tests are about the workbench, HTTPS has its own tests.
        api=ApiSection(listen="127.0.0.1:0", plain_http=True),
        uplink=UplinkSection(backend="torch", workers=1),
        health=HealthSection(interval_s=5.0),
        models=ModelsSection(backend="torch"),
        finetune=finetune_section,
    )
    options = RunOptions(StateDir(state), trust_key=state / "none.pub", bundle=None,
                         boot_dir=state / "boot", model=None, standalone=False)
    daemon = Daemon(options, config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    for _ in range(600):
        if getattr(daemon, "api", None) is not None and daemon.api.port and \
                daemon.model_provider.current() is not None:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    _, token = daemon.uplink.tokens.create("engineer-laptop")
    app = Appliance(daemon, f"http://127.0.0.1:{daemon.api.port}", token, state)
    app.images = await app.post_frames(frames)
    yield app
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """The system Chromium under Playwright; each launch gets a fresh temporary profile
    (user-data-dir) and each page its own context (cookies, viewport, touch)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Console:
    """Console errors and uncaught exceptions of a page (our page logs nothing)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


async def sign_in(page: Any, base: str, token: str) -> None:
    await page.goto(base + "/workbench")
    await page.fill("#token", token)
    await page.click("#signin button[type=submit]")
    await page.wait_for_selector("#grid .tile")
