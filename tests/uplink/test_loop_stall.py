"""The loop-stall watchdog (daemon/loopwatch.py) in a real daemon whose event loop is blocked on
purpose: another process holds the write lock of the daemon's token database when a token is
used for the first time, so the token check, which records that first use on the loop, waits
for it. (The outbox insert, which this test blocked before, runs on the outbox's own thread
now: tests/uplink/test_outbox.py.)"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from models.artifact import Artifact
from tests.support.fleet import free_port, wait_for
from tests.uplink.conftest import image_bytes
from tests.uplink.test_processes import create_token, request, standalone

pytestmark = pytest.mark.slow


def _logged(log: Path, msg: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == msg:
                found.append(entry)
    return found


def test_a_blocked_event_loop_is_logged_with_its_stack(
    tmp_path: Path, tiny_artifact: Artifact
) -> None:
    state, port = tmp_path / "box", free_port()
    token = create_token(state)
    env = {"SPOKE_DAEMON__LOOP_STALL_S": "1", "SPOKE_DAEMON__LOG_JSON": "true",
           "SPOKE_UPLINK__BACKEND": "onnxruntime"}
    proc = standalone(state, port, tiny_artifact.root, env)
    log = state.parent / f"{state.name}.log"
    try:
        wait_for(lambda: request(port, "/readyz")[0] == 200, 90, "the model to load")
        assert _logged(log, "event loop stalled") == []
        holder = sqlite3.connect(state / "uplink" / "tokens.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, until ROLLBACK
        answers: list[tuple[int, Any]] = []
        post = threading.Thread(target=lambda: answers.append(
            request(port, "/v1/images", token, image_bytes(seed=1), timeout=120)))
        post.start()  # the token's first use: its check waits for the lock, on the loop
        try:
            stalled = wait_for(lambda: _logged(log, "event loop stalled"), 25,
                               "the watchdog's warning")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            post.join()
        warning = stalled[0]
        assert warning["level"] == "warning" and warning["stalled_s"] >= 1
        # The stack is the loop thread's, stopped in the token check that waits for the lock.
        last_call = warning["stack"].strip().splitlines()[-2]
        assert "daemon/uplink/tokens.py" in last_call and "in verify" in last_call, \
            warning["stack"]
        # Every other thread's innermost frame, the watchdog's own left out.
        assert all(" in " in t and not t.startswith("loop-watchdog") for t in warning["threads"])
        again = wait_for(lambda: _logged(log, "event loop running again"), 60,
                         "the loop to run again")
        assert again[0]["stalled_s"] > 0  # a lower bound: the last beat came before the stall
        [(status, body)] = answers
        assert status == 202, body
        image = body["id"]
        wait_for(lambda: request(port, f"/v1/images/{image}", token)[1]["status"] == "done", 60,
                 "the image's result")
        assert request(port, "/healthz")[0] == 200
    finally:
        assert proc.terminate() == 0, proc.output()
