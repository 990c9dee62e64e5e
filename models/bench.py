"""``spoke bench``: end-to-end and model-only throughput of every configuration ``auto``
considers here, each against the naive baseline measured in the same run: ONNX Runtime fp32, one
tile at a time. Rows say the model's GFLOP per tile and the GFLOP/s achieved; int8 rows also say
how often their label sets agree with fp32 on the evaluation tiles.

The test image is generated in-process (a concrete-like texture, JPEG quality 90) so every
machine measures the same work. Nothing here asserts a speed; it reports what it saw.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from appliance.errors import SpokeError
from models.artifact import Artifact
from models.backends.base import Backend
from models.backends.calibration import concrete_texture
from models.backends.choice import cpu_identity, engine_versions
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.quantize import evaluate
from models.backends.select import build_backend, candidate_labels, create_backend, fp32_reference
from models.cache import default_cache_dir
from models.pipeline import Pipeline, TileOptions

FULL_SIZE = (4000, 3000)
QUICK_SIZE = (1000, 750)
#: The issue's end-to-end target against the naive loop: higher where AMX is present.
TARGET_SPEEDUP = {"amx": 4.0, "no amx": 2.0}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchPlan:
    """How much to measure: ``quick`` is a smoke run, the default is the published numbers."""

    size: tuple[int, int] = FULL_SIZE
    batches: tuple[int, ...] = (1, 8, 16, 32)
    seconds: float = 3.0
    overlap: int | None = None

    @classmethod
    def quick(cls, size: tuple[int, int] = QUICK_SIZE) -> BenchPlan:
        return cls(size=size, batches=(1, 8), seconds=0.5)


def cpu_model() -> str:
    """CPU model name, the matrix-unit flags that decide bf16/int8 speed, and usable cores."""
    return cpu_identity()


def synthetic_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A concrete-like JPEG (``calibration.concrete_texture``)."""
    pixels = concrete_texture(width, height, np.random.default_rng(seed))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def model_rate(backend: Backend, batch: int, seconds: float) -> float:
    """Inputs per second on random inputs: one warm-up call, then as many calls as fit in
    ``seconds`` (at least two)."""
    c, h, w = backend.input_shape
    x = np.random.default_rng(0).standard_normal((batch, c, h, w), dtype=np.float32)
    backend.batch_size = batch
    backend.infer(x)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        backend.infer(x)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def end_to_end(pipeline: Pipeline, image: bytes) -> dict[str, Any]:
    """One full image through decode, tile, infer and aggregate, after a warm-up batch."""
    backend = pipeline.backend
    backend.infer(backend.artifact.golden_batch()[:1])
    start = time.perf_counter()
    result = pipeline.run(image)
    total = time.perf_counter() - start
    tiles = len(result.tiles)
    overhead = total - result.timings["infer"]
    return {
        "tiles": tiles,
        "seconds": round(total, 3),
        "tiles_per_s": tiles / total,
        "images_per_s": 1.0 / total,
        "overhead_share": overhead / total,
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
    }


def planned_steps() -> int:
    """How many times ``run_bench`` calls ``progress``: for a progress bar's total."""
    return 2 + 2 * len(candidate_labels())


def run_bench(
    artifact: Artifact, plan: BenchPlan, progress: Progress, remeasure: bool = False
) -> dict[str, Any]:
    """Measure everything; ``progress`` is told each step as it starts. ``auto``'s choice is
    read from the engine cache unless ``remeasure``."""
    cfg = artifact.card.config
    flops = cfg.flops_per_image()
    load_before = os.getloadavg()[0]
    image = synthetic_jpeg(*plan.size)
    options = TileOptions(overlap=plan.overlap)
    cache = default_cache_dir()

    progress("baseline onnxruntime/fp32, one tile at a time")
    naive = OnnxRuntimeBackend(artifact, "fp32", batch_size=1, use_gpu=False)
    naive_model = model_rate(naive, 1, plan.seconds)
    naive_pipeline = Pipeline(artifact, naive, options)
    naive_e2e = end_to_end(naive_pipeline, image)
    naive.close()

    progress("auto: the engine choice (stored, or measured now)")
    choosing = time.perf_counter()
    auto = create_backend(artifact, "auto", cache_dir=cache, remeasure=remeasure)
    choice_s = time.perf_counter() - choosing
    auto_info = auto.describe()["auto"]
    auto.close()

    reference: tuple[np.ndarray, np.ndarray] | None = None
    thresholds = np.asarray([artifact.card.thresholds[lab] for lab in artifact.card.labels])
    rows: list[dict[str, Any]] = []
    for label in candidate_labels():
        progress(f"{label}: model-only batch sweep")
        name, precision = label.split("/")
        try:
            backend = build_backend(artifact, name, precision, max(plan.batches), cache)
        except SpokeError as exc:
            rows.append({"config": label, "skipped": str(exc)})
            progress(f"{label}: skipped")
            continue
        agreement = None
        if "int8" in label:
            reference = reference or fp32_reference(artifact)
            agreement = evaluate(reference[1], backend.infer(reference[0]), thresholds).to_dict()
        rates = {b: model_rate(backend, b, plan.seconds) for b in sorted({1, *plan.batches})}
        best = max(rates, key=lambda b: rates[b])
        progress(f"{label}: end to end at batch {best}")
        backend.batch_size = best
        e2e = end_to_end(Pipeline(artifact, backend, options), image)
        backend.close()
        rows.append(
            {
                "config": label,
                "device": backend.device,
                "batch_rates": rates,
                "model_batch1": rates[1],
                "best_batch": best,
                "model_best": rates[best],
                "gflops_model": rates[best] * flops / 1e9,
                "gflops_e2e": e2e["tiles_per_s"] * flops / 1e9,
                "model_batch1_vs_naive": rates[1] / naive_model,
                "model_best_vs_naive": rates[best] / naive_model,
                "e2e": e2e,
                "e2e_vs_naive": e2e["tiles_per_s"] / naive_e2e["tiles_per_s"],
                "int8_vs_fp32": agreement,
            }
        )
    measured = [r for r in rows if "skipped" not in r]
    top = max(measured, key=lambda r: r["e2e_vs_naive"])
    amx = "amx" if "amx_bf16" in cpu_model() else "no amx"
    return {
        "cpu": cpu_model(),
        "engines": engine_versions(),
        "model": artifact.card.ref,
        "load_average": {"start": load_before, "end": os.getloadavg()[0]},
        "config": {
            "img_size": cfg.img_size,
            "patch_size": cfg.patch_size,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
        },
        "gflop_per_tile": flops / 1e9,
        "image": {
            "width": plan.size[0],
            "height": plan.size[1],
            "jpeg_bytes": len(image),
            "tiles": naive_e2e["tiles"],
            "overlap": naive_pipeline.overlap,
        },
        "naive": {
            "model_batch1": naive_model,
            "gflops_model": naive_model * flops / 1e9,
            "e2e": naive_e2e,
        },
        "auto": {**auto_info, "seconds": round(choice_s, 3)},
        "rows": rows,
        "targets": {
            "best": top["config"],
            "e2e_speedup": top["e2e_vs_naive"],
            "e2e_speedup_target": TARGET_SPEEDUP[amx],
            "e2e_speedup_met": top["e2e_vs_naive"] >= TARGET_SPEEDUP[amx],
        },
    }


def to_markdown(res: dict[str, Any]) -> str:
    """The tables published in docs/BENCHMARKS.md."""
    n, img, auto = res["naive"], res["image"], res["auto"]
    engines = ", ".join(f"{k} {v}" for k, v in sorted(res["engines"].items()))
    lines = [
        f"CPU: {res['cpu']}; {engines}; 1-minute load average "
        f"{res['load_average']['start']:.1f} at the start, {res['load_average']['end']:.1f} "
        "at the end.",
        f"Model {res['model']}: {res['gflop_per_tile']:.2f} GFLOP per tile; image "
        f"{img['width']}x{img['height']} JPEG ({img['jpeg_bytes'] // 1024} KiB), "
        f"{img['tiles']} tiles at overlap {img['overlap']}.",
        f"auto: {auto['pick']} ({auto['source']}, {auto['seconds']:.2f} s to choose and build).",
        "",
        "| config | batch | model tiles/s (x naive) | GFLOP/s | e2e tiles/s (x naive) "
        "| decode+tile+aggregate share | int8 label sets = fp32 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| naive: onnxruntime/fp32, 1 tile at a time | 1 | {n['model_batch1']:.1f} (1.0x) "
        f"| {n['gflops_model']:.0f} | {n['e2e']['tiles_per_s']:.1f} (1.0x) "
        f"| {n['e2e']['overhead_share']:.1%} | |",
    ]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['config']} | skipped: {r['skipped']} | | | | | |")
            continue
        e, q = r["e2e"], r["int8_vs_fp32"]
        agreement = (
            "" if q is None else f"{q['agreement']:.1%} ({'ok' if q['accepted'] else 'refused'})"
        )
        lines.append(
            f"| {r['config']} | {r['best_batch']} | {r['model_best']:.1f} "
            f"({r['model_best_vs_naive']:.2f}x) | {r['gflops_model']:.0f} "
            f"| {e['tiles_per_s']:.1f} ({r['e2e_vs_naive']:.2f}x) "
            f"| {e['overhead_share']:.1%} | {agreement} |"
        )
    t = res["targets"]
    lines += [
        "",
        f"Best end to end: {t['best']}, {t['e2e_speedup']:.2f}x the naive loop "
        f"(target >= {t['e2e_speedup_target']:g}x on this CPU: "
        f"{'met' if t['e2e_speedup_met'] else 'NOT met'}).",
    ]
    return "\n".join(lines)
