"""Fixtures: a state directory with a device key and a model store serving a tiny model, the
real fine-tune service and routes under ``aiohttp_client``, generated site samples."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient
from PIL import Image, ImageDraw

from appliance.config import ApiSection, FinetuneSection, ModelsSection
from appliance.fsutil import write_secret
from appliance.identity import generate_key, key_to_pem
from daemon import compose
from daemon.api.server import ApiServer
from daemon.delivery.service import ModelService
from daemon.finetune.promote import build_entry, validate_entry
from daemon.finetune.service import FinetuneService
from tests.support.events import Events
from tests.support.wait import eventually

FAST_MODELS = ModelsSection(backend="onnxruntime", gate_good_inferences=2, gate_quiet_s=0.3)
FAST = FinetuneSection(threads=1, niceness=5, checkpoint_every_s=60, checkpoint_every_steps=2,
                       default_budget_s=60, margin=0.0, max_label_drop=1.0)
TOKEN = "test-token"
SITE = 31


def make_parent(out: Path, version: str = "1.0.0", encoder: Path | None = None) -> Path:
    """A tiny model whose head predicts nothing (macro-F1 0 on any split), on the encoder of
    ``encoder`` if given (else random): a fine-tune that learns anything beats it, so the
    gate's decision is predictable."""
    from models.artifact import load_artifact, write_artifact
    from models.config import tiny_config
    from models.vit import build_model

    model = load_artifact(encoder).build_model() if encoder else build_model(tiny_config(), 0)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-2.0)
    write_artifact(model, out, name="crack-vit", version=version)
    return out


def concrete(rng: np.random.Generator, width: int, height: int,
             crack: tuple[int, int] | None = None) -> Image.Image:
    """Plain noisy concrete; with ``crack`` (x0, x1), a dark jagged line across those columns:
    the clear signal the fine-tune tests learn."""
    grey = rng.integers(110, 170)
    pixels = np.clip(grey + rng.normal(0, 12, (height, width, 1)), 0, 255).repeat(3, axis=2)
    image = Image.fromarray(pixels.astype(np.uint8))
    if crack is not None:
        x0, x1 = crack
        points = [(x0, int(rng.integers(0, height)))]
        for x in range(x0 + 6, x1 + 6, 6):
            points.append((x, int(np.clip(points[-1][1] + rng.integers(-5, 6), 0, height - 1))))
        ImageDraw.Draw(image).line(points, fill=(30, 30, 30), width=2)
    return image


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder pre-trained (supervised, a few seconds) on two other generated sites:
    features a linear probe can use, like a real foundation model's."""
    from models.training.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(method="supervised", preset="tiny", img_size=32, domains=(1, 2),
                         tiles_per_domain=150, steps=150, batch_size=32, lr=2e-3,
                         precision="fp32", threads=1)
    out = tmp_path_factory.mktemp("encoder") / "encoder"
    pretrain(cfg, out, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def parent_artifact(tmp_path_factory: pytest.TempPathFactory, encoder: Path) -> Path:
    return make_parent(tmp_path_factory.mktemp("parent") / "crack-vit-1.0.0", encoder=encoder)


@pytest.fixture(scope="session")
def site_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 labeled 32-px tiles of the site's own generated domain (labels.csv + PNGs)."""
    from models.data import write_tiles

    out = tmp_path_factory.mktemp("site") / "tiles"
    write_tiles(out, SITE, 32, size=32)
    return out


def png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def seed_store(state: Path, artifact: Path) -> None:
    """Install ``artifact`` in the model store and make it current, as delivery would."""
    from daemon.delivery.store import ModelStore

    key = state / "identity" / "device.key"
    work = state / "seed"
    work.mkdir(parents=True, exist_ok=True)
    tar, meta = build_entry(artifact, work, key, "seed", "none")
    store = ModelStore(state / "models")
    with store.locked():
        store.install(tar, meta, lambda p: validate_entry(p, meta, key))
        store.activate(meta["sha256"], "test", probation=False)


@dataclass
class Site:
    state: Path
    client: TestClient
    service: FinetuneService
    models: ModelService
    events: Events = field(default_factory=Events)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def kinds(self) -> list[str]:
        return self.events.kinds()

    def last(self, kind: str) -> dict[str, Any]:
        return self.events.last(kind)

    async def add_tiles(self, tiles: Path, limit: int | None = None) -> int:
        from models.data import read_labels

        rows = read_labels(tiles)[:limit]
        svc = self.service
        assert svc.samples is not None
        known, _ = svc.known_labels()
        for row in rows:
            await svc.db(svc.samples.add, (tiles / row.file).read_bytes(), row.labels, known)
        return len(rows)

    async def start(self, **options: Any) -> dict[str, Any]:
        resp = await self.client.post("/v1/finetune", json=options, headers=self.auth)
        body: dict[str, Any] = await resp.json()
        assert resp.status == 202, body
        return body

    async def wait(self, job_id: str, timeout: float = 90.0,
                   until: tuple[str, ...] = ("done", "failed", "cancelled")) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def finished() -> dict[str, Any] | None:
            resp = await self.client.get(f"/v1/finetune/{job_id}", headers=self.auth)
            last.update(await resp.json())
            return dict(last) if last["status"] in until else None

        return await eventually(finished, timeout, lambda: f"job {job_id} to end ({last})", 0.2)

    async def settle_gate(self, timeout: float = 20.0) -> None:
        async def decided() -> bool:
            if self.models.gate is None:
                return True
            await self.models.check_gate()
            return False

        await eventually(decided, timeout, "the health gate to decide")


async def open_site(state: Path, aiohttp_client: Any, config: FinetuneSection = FAST,
                    events: Events | None = None) -> Site:
    events = Events() if events is None else events
    emit = events.emit
    models = compose.models(state / "models", FAST_MODELS, emit)
    await models.start()
    server = ApiServer(ApiSection())
    service = compose.finetune(server.app, state / "finetune", config, models.manager, emit,
                               lambda t: "test" if t == TOKEN else None, models=models,
                               device_key=lambda: state / "identity" / "device.key")
    await service.start()
    client = await aiohttp_client(server.app)
    return Site(state, client, service, models, events)


@pytest.fixture
async def site(tmp_path: Path, aiohttp_client: Any, parent_artifact: Path
               ) -> AsyncIterator[Site]:
    """An appliance state dir: device key, a committed crack-vit 1.0.0, the fine-tune API."""
    state = tmp_path / "state"
    write_secret(state / "identity" / "device.key", key_to_pem(generate_key()))
    seed_store(state, parent_artifact)
    s = await open_site(state, aiohttp_client)
    yield s
    await s.service.stop()
    await s.models.stop()
