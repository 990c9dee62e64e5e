"""Real daemons as subprocesses: kill -9 durability, and detections reaching the hub."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from models.artifact import Artifact
from tests.support.fleet import Appliance, Hub, Process, cli, free_port, wait_for
from tests.uplink.conftest import image_bytes

pytestmark = pytest.mark.slow

# One worker and one tile per backend call: processing is slow, posting is fast, so a kill
# lands while most of the accepted images are still waiting.
SLOW_ENV = {
    "SPOKE_UPLINK__BACKEND": "torch",
    "SPOKE_UPLINK__WORKERS": "1",
    "SPOKE_UPLINK__MAX_BATCH_TILES": "1",
    "SPOKE_UPLINK__MAX_WAIT_MS": "0",
}


def request(
    port: int,
    path: str,
    token: str | None = None,
    data: bytes | None = None,
    content_type: str = "image/png",
    timeout: float = 10,
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers=headers,
        method="POST" if data is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def standalone(state: Path, port: int, model: Path, env: dict[str, str]) -> Process:
    state.mkdir(parents=True, exist_ok=True)
    return Process(
        [
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--standalone",
            "--model",
            str(model),
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        state.parent / f"{state.name}.log",
        # Plain HTTP by name: these tests are about the uplink's processes, not TLS.
        env=env | {"SPOKE_API__PLAIN_HTTP": "true"},
    )


def create_token(state: Path) -> str:
    out = cli("spoke", "tokens", "create", "--state-dir", str(state), "--name", "drone").stdout
    return out.strip()


def test_nothing_answered_202_is_lost_across_kill_9(
    tmp_path: Path, tiny_artifact: Artifact
) -> None:
    state, port = tmp_path / "box", free_port()
    token = create_token(state)
    proc = standalone(state, port, tiny_artifact.root, SLOW_ENV)
    try:
        wait_for(lambda: request(port, "/readyz")[0] == 200, 60, "the model to load")
        accepted = []
        for seed in range(8):
            status, body = request(port, "/v1/images", token, image_bytes(320, 240, seed=seed))
            assert status == 202, body
            accepted.append(body["id"])
        proc.proc.kill()  # SIGKILL: no shutdown code runs
        proc.proc.wait()
    finally:
        proc.kill()
    db = sqlite3.connect(state / "uplink" / "results.db")
    stored = dict(db.execute("SELECT id, status FROM images").fetchall())
    db.close()
    assert set(accepted) <= set(stored)
    assert any(s in ("queued", "running") for s in stored.values()), "killed too late"

    proc = standalone(state, port, tiny_artifact.root, SLOW_ENV)
    try:

        def all_done() -> bool:
            return (
                all(
                    request(port, f"/v1/images/{i}", token)[1]["status"] == "done" for i in accepted
                )
                if request(port, "/readyz")[0] == 200
                else False
            )

        wait_for(all_done, 120, "every accepted image to be processed after the restart")
    finally:
        assert proc.terminate() == 0, proc.output()


def test_detections_reach_the_hub_and_spoke_hub_events_shows_them(
    tmp_path: Path, tiny_artifact: Artifact
) -> None:
    hub = Hub(tmp_path).start()
    box = Appliance(tmp_path, hub)
    try:
        token = create_token(box.state_dir)
        box.start(
            hub.bundle(tmp_path / "b.spoke"),
            env={"SPOKE_UPLINK__BACKEND": "torch", "SPOKE_API__PLAIN_HTTP": "true"},
            args=["--model", str(tiny_artifact.root)],
        )
        device = box.wait_enrolled()
        wait_for(lambda: request(box.api_port, "/readyz")[0] == 200, 60, "the model")
        status, body = request(
            box.api_port,
            "/v1/images?mission=m1",
            token,
            image_bytes(64, 48, seed=11, fmt="JPEG", gps=(46.1, 7.2)),
            "image/jpeg",
        )
        assert status == 202

        def detection() -> dict[str, Any] | None:
            out = cli(
                "spoke-hub",
                "events",
                "--home",
                str(hub.home),
                "--device",
                device,
                "--kind",
                "detection",
                "--json",
            ).stdout
            found = [e for e in json.loads(out) if e["data"]["image"] == body["id"]]
            return found[0] if found else None

        event = wait_for(detection, 60, "the detection event at the hub")
        assert event["data"]["mission"] == "m1"
        assert event["data"]["gps"]["latitude"] == 46.1
        assert event["data"]["model"] == {"name": "tiny", "version": "0.1.0"}
        table = cli("spoke-hub", "events", "--home", str(hub.home)).stdout
        assert "detection" in table and body["id"][:12] in table
    finally:
        box.stop()
        hub.stop()
