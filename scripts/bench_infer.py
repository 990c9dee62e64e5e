"""``make bench``: ``spoke infer`` on a 12 MP JPEG, end to end with process start, against the
naive per-tile fp32 loop, in one run.

1. ``spoke infer`` once with an empty engine cache: ``auto`` measures every engine (and builds
   and gates the int8 graph) and stores its pick;
2. the naive loop as its own process: ONNX Runtime fp32 on the artifact's graph, PIL decode,
   one tile at a time (``--naive``), timed from outside like ``spoke infer``;
3. ``spoke infer`` again: the pick comes from the cache (its engine time is reported);
4. the naive loop again; the ratio is against the mean of both naive runs, so a change in the
   machine's load during the run shows as their spread.

    .venv/bin/python -m scripts.bench_infer [--preset vit-small-p16-224] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def naive_loop(model: Path, image: Path) -> None:
    """What a first attempt looks like: decode, cut tiles, run each tile alone in fp32."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    card = json.loads((model / "card.json").read_text())
    pre = card["preprocessing"]
    size = pre["input_size"]
    mean = np.asarray(pre["mean"], np.float32)
    std = np.asarray(pre["std"], np.float32)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.open(image).convert("RGB"))
    stride = size - size // 7
    h, w = pixels.shape[:2]
    ys = sorted({min(y, h - size) for y in range(0, h - size + stride, stride)})
    xs = sorted({min(x, w - size) for x in range(0, w - size + stride, stride)})
    count = 0
    for y in ys:
        for x in xs:
            tile = (pixels[y : y + size, x : x + size].astype(np.float32) / 255 - mean) / std
            session.run(None, {"input": tile.transpose(2, 0, 1)[None].copy()})
            count += 1
    print(json.dumps({"tiles": count}))


def timed(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of a child process (start to exit) and its JSON output."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="vit-small-p16-224")
    parser.add_argument("--size", default="4000x3000", help="WxH of the generated JPEG")
    parser.add_argument("--model", type=Path, help="an artifact to use instead of --preset's")
    parser.add_argument(
        "--engine-cache",
        type=Path,
        help="use this engine cache (default: a new empty one, so the first run measures)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--naive", nargs=2, metavar=("MODEL", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        naive_loop(Path(args.naive[0]), Path(args.naive[1]))
        return

    from models.artifact import write_artifact
    from models.bench import cpu_model, synthetic_jpeg
    from models.config import preset
    from models.vit import build_model

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="spoke-bench-infer-") as tmp:
        root = Path(tmp)
        model = args.model or root / args.preset
        if args.model is None:
            write_artifact(
                build_model(preset(args.preset), seed=0), model, name=args.preset, version="0.0.0"
            )
        image = root / "frame.jpg"
        image.write_bytes(synthetic_jpeg(width, height))
        env = {**os.environ, "SPOKE_ENGINE_CACHE": str(args.engine_cache or root / "engines")}
        infer = ["-m", "daemon", "infer", str(image), "--model", str(model), "--json"]
        naive = ["-m", "scripts.bench_infer", "--naive", str(model), str(image)]
        load = [os.getloadavg()[0]]
        print("spoke infer, empty engine cache (auto measures)...", file=sys.stderr)
        first_s, first = timed(infer, env)
        print("naive loop...", file=sys.stderr)
        naive_before, counted = timed(naive, env)
        print("spoke infer, engine choice from the cache...", file=sys.stderr)
        second_s, second = timed(infer, env)
        print("naive loop again...", file=sys.stderr)
        naive_after, _ = timed(naive, env)
        load.append(os.getloadavg()[0])
    naive_s = (naive_before + naive_after) / 2
    tiles = len(second["results"][0]["tiles"])
    auto = first["backend"]["auto"]
    result = {
        "cpu": cpu_model(),
        "model": first["model"],
        "image": f"{width}x{height}",
        "tiles": tiles,
        "naive_tiles": counted["tiles"],
        "load_average": load,
        "naive_s": [round(naive_before, 2), round(naive_after, 2)],
        "first_infer": {
            "seconds": round(first_s, 2),
            "startup": first["startup"],
            "engine_choice": auto["source"],
        },
        "second_infer": {
            "seconds": round(second_s, 2),
            "startup": second["startup"],
            "engine_choice": second["backend"]["auto"]["source"],
        },
        "pick": auto["pick"],
        "rates": auto["rates"],
        "refused": auto["refused"],
        "int8_vs_fp32": auto["evaluations"],
        "speedup_vs_naive": round(naive_s / second_s, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"CPU: {result['cpu']}; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
    )
    print(
        f"{result['model']}, {width}x{height} JPEG, {tiles} tiles; auto picked {auto['pick']} "
        f"from {auto['rates']} inputs/s"
    )
    print("| run | seconds (process start to exit) | x naive |")
    print("| --- | --- | --- |")
    print(
        f"| naive per-tile onnxruntime fp32 loop | {naive_before:.1f} / {naive_after:.1f} | 1.0 |"
    )
    print(
        f"| spoke infer, first (choice: {auto['source']}) | {first_s:.1f} "
        f"| {naive_s / first_s:.2f} |"
    )
    print(f"| spoke infer, pick from the cache | {second_s:.1f} | {naive_s / second_s:.2f} |")
    print(
        f"second run: engine {second['startup']['engine_s']} s (choice from the "
        f"{result['second_infer']['engine_choice']}); first tiles inferred "
        f"{second['startup']['process_to_first_tiles_s']} s after process start"
    )
    for label, ev in auto["evaluations"].items():
        print(f"{label} vs fp32: {ev['reason']} (max |diff| {ev['max_abs_diff']})")


if __name__ == "__main__":
    main()
