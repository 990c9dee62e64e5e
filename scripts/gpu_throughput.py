"""Throughput of the torch backend on an NVIDIA GPU (run by scripts/gpu_check.sh).

For each preset, random weights: the backend as ``spoke`` uses it (float32 numpy batch in,
probabilities out, so the host-to-device copy counts) in bf16 eager and with CUDA graphs, and
the same forward pass on inputs already on the GPU (model only), at one batch size.

    python3 -m scripts.gpu_throughput [--presets vit-base-p16-224,vit-small-p16-224]
                                      [--batch 256] [--seconds 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import write_artifact
from models.backends.torch_backend import TorchBackend
from models.config import ViTConfig, preset
from models.vit import build_model


def rate(step: Any, batch: int, seconds: float) -> float:
    """Inputs per second: three warm-up steps, then steps until ``seconds`` have passed."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    torch.cuda.synchronize()
    return calls * batch / (time.perf_counter() - start)


def model_only(cfg: ViTConfig, x: np.ndarray, seconds: float) -> float:
    """The forward pass alone, on inputs already on the GPU."""
    model = build_model(cfg, seed=0).cuda().eval()
    on_device = torch.from_numpy(x).cuda()

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(on_device)

    return rate(step, len(x), seconds)


def measure(name: str, batch: int, seconds: float, root: Path) -> dict[str, Any]:
    cfg = preset(name)
    artifact = write_artifact(build_model(cfg, seed=0), root / name, name=name, version="0.0.0")
    x = np.random.default_rng(0).standard_normal(
        (batch, 3, cfg.img_size, cfg.img_size), dtype=np.float32
    )
    out: dict[str, Any] = {
        "preset": name,
        "batch": batch,
        "gflop_per_image": cfg.flops_per_image() / 1e9,
    }
    for label, graphs in (("backend_bf16_eager", False), ("backend_bf16_cuda_graphs", True)):
        backend = TorchBackend(
            artifact, "bf16", device="cuda", batch_size=batch, cuda_graphs=graphs
        )
        backend.smoke_test()
        out[label] = round(rate(lambda b=backend: b.infer(x), batch, seconds), 1)
        backend.close()
    out["model_only_bf16_eager"] = round(model_only(cfg, x, seconds), 1)
    best = max(out["backend_bf16_eager"], out["backend_bf16_cuda_graphs"])
    out["backend_tflops"] = round(best * cfg.flops_per_image() / 1e12, 1)
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", default="vit-base-p16-224,vit-small-p16-224")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="spoke-gpu-") as tmp:
        rows = [measure(n, args.batch, args.seconds, Path(tmp)) for n in args.presets.split(",")]
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
