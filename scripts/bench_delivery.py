"""Model delivery on loopback: publish to active, bytes on the wire, a swap under load.

A real hub (managed mosquitto, HTTPS repository) and a real appliance, both subprocesses:

1. publish ``vit-small-p16-224`` 1.0.0 and a policy; time from the end of ``spoke-hub models
   publish`` to the appliance's ``model_activated`` and ``model_committed`` events, and the
   bytes the appliance fetched (TUF metadata plus the target) against the target's size;
2. with clients posting images to the uplink API without pause, publish 1.1.0 and let the
   appliance swap to it; count requests refused and images that failed (must be 0).

    python -m scripts.bench_delivery [--preset vit-small-p16-224] [--clients 2] [--json]
"""

import argparse
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from PIL import Image

from tests.support.fleet import Appliance, Hub, cli, wait_for

POLICY = """
[[rule]]
selector = "site=bridge-17"
model = "bench-vit"
version = ">=1.0,<2"
"""
ENV = {
    "SPOKE_API__PLAIN_HTTP": "true",  # measures delivery under load, not TLS
    "SPOKE_MODELS__BACKEND": "onnxruntime",
    "SPOKE_MODELS__GATE_QUIET_S": "5",
    "SPOKE_MODELS__GATE_GOOD_INFERENCES": "1000000",
}


def make_artifact(root: Path, preset: str, version: str, seed: int) -> Path:
    out = root / f"bench-vit-{version}"
    cli("spoke", "models", "create", "--preset", preset, "--name", "bench-vit", "--version",
        version, "--seed", str(seed), "--out", str(out))
    return out


def event(hub: Hub, device: str, kind: str, version: str) -> dict[str, Any] | None:
    for e in hub.events(device, kind):
        if e["data"].get("version") == version:
            return e
    return None


def publish_to_active(hub: Hub, device: str, artifact: Path, version: str) -> dict[str, Any]:
    t0 = time.time()
    row = hub.publish(artifact)
    published = time.time()
    activated = wait_for(lambda: event(hub, device, "model_activated", version), 600,
                         f"{version} activated")
    committed = wait_for(lambda: event(hub, device, "model_committed", version), 600,
                         f"{version} committed")
    return {
        "version": version,
        "publish_command_s": round(published - t0, 2),
        "publish_to_active_s": round(activated["ts"] - published, 2),
        "publish_to_committed_s": round(committed["ts"] - published, 2),
        "target_bytes": row["length"],
        "bytes_fetched": activated["data"]["bytes_fetched"],
        "overhead_ratio": round(activated["data"]["bytes_fetched"] / row["length"], 5),
    }


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


class Load:
    """Clients posting distinct images to the uplink without pause."""

    def __init__(self, port: int, token: str, clients: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/images"
        self.auth = {"Authorization": f"Bearer {token}"}
        self.http = urllib3.PoolManager(maxsize=clients + 2)
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self.refused: dict[int, int] = {}
        self.seq = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.seq += 1
                seed = self.seq
            resp = self.http.request("POST", self.url, body=png(seed),
                                     headers=self.auth | {"Content-Type": "image/png"})
            with self.lock:
                if resp.status == 202:
                    self.accepted.append(json.loads(resp.data)["id"])
                else:
                    self.refused[resp.status] = self.refused.get(resp.status, 0) + 1
            if resp.status == 429:
                time.sleep(0.2)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def outcomes(self, timeout: float = 600) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        versions: dict[str, int] = {}
        failures = []
        deadline = time.monotonic() + timeout
        for image_id in self.accepted:
            while True:
                body = json.loads(self.http.request("GET", f"{self.url}/{image_id}",
                                                    headers=self.auth).data)
                if body["status"] in ("done", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            by_status[body["status"]] = by_status.get(body["status"], 0) + 1
            if body["status"] == "failed":
                failures.append(body["reason"])
            if body.get("model"):
                v = body["model"]["version"]
                versions[v] = versions.get(v, 0) + 1
        return {"accepted": len(self.accepted), "refused": self.refused, "status": by_status,
                "served_by_version": versions, "failures": failures[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="vit-small-p16-224")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spoke-bench-delivery-") as tmp:
        root = Path(tmp)
        v1 = make_artifact(root, args.preset, "1.0.0", 0)
        v2 = make_artifact(root, args.preset, "1.1.0", 1)
        hub = Hub(root).start()
        appliance = Appliance(root, hub)
        try:
            hub.apply_policy(POLICY)
            appliance.start(hub.bundle(root / "b.spoke"), env=ENV)
            device = appliance.wait_enrolled()
            first = publish_to_active(hub, device, v1, "1.0.0")
            token = json.loads(cli("spoke", "tokens", "create", "--name", "bench", "--json",
                                   "--state-dir", str(appliance.state_dir)).stdout)["token"]
            with Load(appliance.api_port, token, args.clients) as load:
                time.sleep(3)
                second = publish_to_active(hub, device, v2, "1.1.0")
                time.sleep(3)
            swap = load.outcomes()
        finally:
            appliance.stop()
            hub.stop()
    result = {"preset": args.preset, "clients": args.clients, "first": first, "second": second,
              "swap_under_load": swap, "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in (first, second):
        print(f"{args.preset} {r['version']}: publish command {r['publish_command_s']} s, "
              f"publish->active {r['publish_to_active_s']} s, publish->committed "
              f"{r['publish_to_committed_s']} s, fetched {r['bytes_fetched']} B for a "
              f"{r['target_bytes']} B target (x{r['overhead_ratio']})")
    failed = swap["status"].get("failed", 0) + sum(
        n for code, n in swap["refused"].items() if code != 429)
    print(f"swap under load: {swap['accepted']} images accepted, refused {swap['refused']}, "
          f"outcomes {swap['status']}, served by {swap['served_by_version']}: "
          f"{failed} failed")


if __name__ == "__main__":
    main()
