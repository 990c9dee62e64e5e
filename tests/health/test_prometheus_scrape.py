"""A real Prometheus server scrapes our /metrics and answers a query about it."""

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.health import DaemonFacts
from daemon.health.metrics import DaemonMetrics
from daemon.health.nvml import NvmlReader
from daemon.health.sampler import Sampler
from tests.health.fake_nvml import FakeNvml
from tests.support.wait import eventually

pytestmark = pytest.mark.slow
DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def metrics_server(metrics: DaemonMetrics) -> TestServer:
    async def handle(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Starts Prometheus scraping a /metrics endpoint; yields (API URL, scrape target)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; scripts/setup.sh)")
    metrics = DaemonMetrics()
    metrics.update_from_snapshot(Sampler(gpu=NvmlReader(FakeNvml())).sample(DaemonFacts()))
    metrics.drop("upload_too_large")
    exporter = await metrics_server(metrics)
    target = f"127.0.0.1:{exporter.port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: spoke\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}", target
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
        await exporter.close()


async def query(session: aiohttp.ClientSession, api: str, promql: str) -> list[Any]:
    """The query's result vector; empty until Prometheus is up and has scraped."""
    try:
        async with session.get(f"{api}/api/v1/query", params={"query": promql}) as resp:
            if resp.status != 200:
                return []
            body = await resp.json()
    except aiohttp.ClientConnectionError:
        return []
    return list(body["data"]["result"])


async def test_real_prometheus_scrapes_and_answers_a_query(
    prometheus: tuple[str, str],
) -> None:
    api, target = prometheus
    promql = 'spoke_inputs_dropped_total{reason="upload_too_large"}'
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        result = await eventually(lambda: query(session, api, promql), DEADLINE_S,
                                  f"Prometheus to answer {promql}", 0.5)
        assert result[0]["metric"]["instance"] == target
        assert float(result[0]["value"][1]) == 1.0
        up = await query(session, api, 'up{job="spoke"}')
    assert float(up[0]["value"][1]) == 1.0
