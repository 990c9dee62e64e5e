"""Uplink benchmark: 12 MP JPEGs through the drone uplink API versus direct ``spoke infer``.

In one run, on one model and backend:

1. direct: ``spoke infer``'s own code (``daemon.commands.infer.infer``) in this process on 1
   and on 1+N images; the difference over N is the per-image time without process start-up
   and model loading;
2. API: ``spoke run --standalone --model`` as a separate process on loopback; this process is
   the load generator (aiohttp), at each concurrency C keeping C requests in flight. A request
   is timed from the start of its POST to the GET that first shows it done (polled every
   ``--poll`` seconds, so latencies carry that resolution).

Every posted image is distinct (a JPEG comment makes each one unique; the pixels, and so the
work, are the same), since the uplink never computes the same image twice.

    .venv/bin/python -m scripts.bench_uplink [--images 16] [--concurrency 1,4,16] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The uplink's default ``max_batch_tiles``: the model-only baseline runs at the same batch.
MAX_BATCH_TILES = 32


def tiles_per_frame(model: Path, width: int, height: int) -> int:
    """How many tiles the uplink cuts a frame into (default overlap, no downscale)."""
    from models.artifact import load_artifact
    from models.tiling import tile_positions

    size = load_artifact(model).card.preprocessing.input_size
    overlap = size // 7
    return len(tile_positions(width, size, overlap)) * len(tile_positions(height, size, overlap))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spoke(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"bench_uplink: spoke {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def base_frames(count: int, width: int, height: int) -> list[bytes]:
    """Generated drone frames (EXIF GPS included), JPEG quality 92 like the data generator."""
    from PIL import Image

    from models.data import Domain, render_frame
    from models.data.exif import capture_info, make_exif

    domain = Domain.from_seed(2)
    frames = []
    for i in range(count):
        sample = render_frame(domain, i, width, height)
        out = io.BytesIO()
        Image.fromarray(sample.image).save(out, "JPEG", quality=92,
                                           exif=make_exif(capture_info(domain, i)))
        frames.append(out.getvalue())
    return frames


def unique(frame: bytes, n: int) -> bytes:
    """The same JPEG with a comment segment (COM) saying ``n``: new bytes, same pixels."""
    text = f"spoke bench {n}".encode()
    return frame[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + frame[2:]


def direct_seconds_per_image(model: Path, backend: str, files: list[Path]) -> float:
    """``spoke infer`` on 1 image and on 1+N images, in this process; (T(1+N) - T(1)) / N,
    after one untimed call (one-time costs must not land in T(1))."""
    from daemon.commands.infer import infer

    def run(paths: list[Path]) -> float:
        ns = argparse.Namespace(images=paths, model=model, backend=backend, overlap=None,
                                downscale=1, json=True, overlay=None, remeasure=False)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = infer(ns)
        if code != 0:
            raise SystemExit("bench_uplink: spoke infer failed")
        return time.perf_counter() - start

    run(files[:1])  # warm-up: the first call also imports ONNX Runtime and builds caches
    one = run(files[:1])
    many = run(files)
    return (many - one) / (len(files) - 1)


def model_only_tiles_per_s(model: Path, backend: str, batch: int, seconds: float) -> float:
    """The engine alone (the pick of ``backend``, ``auto`` reading the same engine cache as the
    daemon) on full batches of preprocessed tiles: the ceiling the API is compared with."""
    from models.artifact import load_artifact
    from models.backends import create_backend
    from models.bench import model_rate

    engine = create_backend(load_artifact(model), backend, batch_size=batch)
    try:
        return model_rate(engine, batch, seconds)
    finally:
        engine.close()


async def load(base: str, token: str, images: list[bytes], concurrency: int,
               poll: float) -> tuple[float, list[float]]:
    """Keep ``concurrency`` requests in flight; returns (wall seconds, latencies)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    todo = list(images)
    latencies: list[float] = []

    async def client(http: aiohttp.ClientSession) -> None:
        while todo:
            data = todo.pop()
            start = time.perf_counter()
            while True:
                async with http.post("/v1/images", data=data,
                                     headers={**headers, "Content-Type": "image/jpeg"}) as r:
                    if r.status == 429:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status != 202:
                        raise SystemExit(f"bench_uplink: POST answered {r.status}")
                    location = (await r.json())["location"]
                    break
            while True:
                async with http.get(location, headers=headers) as r:
                    status = (await r.json())["status"]
                if status in ("done", "failed"):
                    if status == "failed":
                        raise SystemExit("bench_uplink: an image failed")
                    latencies.append(time.perf_counter() - start)
                    break
                await asyncio.sleep(poll)

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(base, timeout=timeout) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bench_uplink: the daemon exited; see its log")
        with contextlib.suppress(OSError), urllib.request.urlopen(
            base + "/readyz", timeout=2
        ) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit("bench_uplink: the daemon did not become ready")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-tiny-p16-224")
    parser.add_argument("--backend", default="auto",
                        help="the same backend for all sides (default auto: the stored pick)")
    parser.add_argument("--images", type=int, default=16,
                        help="images per concurrency level (at least the concurrency)")
    parser.add_argument("--direct-images", type=int, default=3,
                        help="N for the direct measurement (default 3)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--frame-size", default="4000x3000")
    parser.add_argument("--poll", type=float, default=0.05, help="GET poll interval, s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    width, height = (int(v) for v in args.frame_size.split("x"))
    levels = [int(c) for c in args.concurrency.split(",")]
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="spoke-bench-uplink-") as tmp:
        root = Path(tmp)
        model = root / "model"
        spoke("models", "create", "--preset", args.preset, "--name", "bench", "--version",
              "1.0.0", "--out", str(model))
        print(f"generating 2 frames of {width}x{height}...", file=sys.stderr)
        frames = base_frames(2, width, height)
        files = []
        for i in range(args.direct_images + 1):
            path = root / f"direct-{i}.jpg"
            path.write_bytes(unique(frames[i % 2], -1 - i))
            files.append(path)
        print("direct spoke infer...", file=sys.stderr)
        direct_before = direct_seconds_per_image(model, args.backend, files)
        print("model only...", file=sys.stderr)
        engine_before = model_only_tiles_per_s(model, args.backend, MAX_BATCH_TILES, 5.0)

        state, port = root / "box", free_port()
        token = spoke("tokens", "create", "--state-dir", str(state), "--name", "bench").strip()
        # Plain HTTP by name: the baseline (direct spoke infer) has no TLS either.
        env = {**os.environ, "PYTHONPATH": str(REPO), "SPOKE_UPLINK__BACKEND": args.backend,
               "SPOKE_API__PLAIN_HTTP": "true",
               "SPOKE_UPLINK__QUEUE_DEPTH": str(max(64, max(levels) * 2))}
        log = open(root / "daemon.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--standalone", "--model", str(model),
             "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        base = f"http://127.0.0.1:{port}"
        rows: list[dict[str, Any]] = []
        try:
            wait_ready(base, proc)
            serial = 0
            for level in levels:
                count = max(args.images, level)
                images = [unique(frames[(serial + i) % 2], serial + i) for i in range(count)]
                serial += count
                print(f"API at concurrency {level} ({count} images)...", file=sys.stderr)
                wall, lat = asyncio.run(load(base, token, images, level, args.poll))
                rate = count / wall
                rows.append({"concurrency": level, "images": count,
                             "images_per_s": round(rate, 3),
                             "p50_s": round(statistics.median(lat), 2),
                             "p99_s": round(percentile(lat, 0.99), 2)})
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        # Direct again after the API runs: on a shared machine the load drifts, so the API is
        # compared with the mean of a direct measurement on either side of it.
        print("direct spoke infer again...", file=sys.stderr)
        direct_after = direct_seconds_per_image(model, args.backend, files)
        engine_after = model_only_tiles_per_s(model, args.backend, MAX_BATCH_TILES, 5.0)
        direct_s = (direct_before + direct_after) / 2
        engine_rate = (engine_before + engine_after) / 2
        tiles = tiles_per_frame(model, width, height)
        for r in rows:
            r["vs_direct"] = round(r["images_per_s"] * direct_s, 2)
            r["tiles_per_s"] = round(r["images_per_s"] * tiles, 1)
            r["vs_model_only"] = round(r["images_per_s"] * tiles / engine_rate, 2)

    result = {
        "preset": args.preset, "backend": args.backend, "frame": f"{width}x{height}",
        "direct_images_per_s": round(1 / direct_s, 3), "direct_s_per_image": round(direct_s, 2),
        "direct_s_per_image_before_after": [round(direct_before, 2), round(direct_after, 2)],
        "tiles_per_frame": tiles,
        "model_only_tiles_per_s": round(engine_rate, 1),
        "model_only_before_after": [round(engine_before, 1), round(engine_after, 1)],
        "levels": rows, "cpu": cpu_model(),
        "cpus": os.cpu_count(), "load_before": [round(v, 1) for v in load_start],
        "load_after": [round(v, 1) for v in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.preset} on {args.backend}, {width}x{height} JPEG; direct spoke infer: "
          f"{result['direct_images_per_s']} images/s ({direct_s:.2f} s/image; "
          f"{direct_before:.2f} s before the API runs, {direct_after:.2f} s after)")
    print(f"model only (same engine, batches of {MAX_BATCH_TILES}): "
          f"{result['model_only_tiles_per_s']} tiles/s; {tiles} tiles per frame")
    print("| concurrency | images | images/s | tiles/s | p50 latency | p99 latency "
          "| API / direct | API / model only |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['concurrency']} | {r['images']} | {r['images_per_s']} | {r['tiles_per_s']} "
              f"| {r['p50_s']} s | {r['p99_s']} s | {r['vs_direct']} | {r['vs_model_only']} |")
    print(f"load average before {result['load_before']}, after {result['load_after']}")


if __name__ == "__main__":
    main()
