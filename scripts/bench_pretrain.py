"""One training step of the default foundation recipe, every patch against the recipe's
PatchDropout share, interleaved in one process (the ratio is what to read: these machines are
shared and noisy).

    .venv/bin/python -m scripts.bench_pretrain [--rounds 6] [--json OUT]

Each round times one step of each (forward, BCE, backward and the optimiser step of the
product's own ``make_task``, at the recipe's batch, threads and precision) after a warm-up
step; the medians and their ratio are printed. ``make bench`` runs it.
"""

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models.data import tile_arrays
from models.training.batches import TileSet
from models.training.foundation import DEFAULT_CONFIG
from models.training.loop import autocast
from models.training.pretrain import PretrainConfig, make_task
from models.vit import build_model


def stepper(cfg: PretrainConfig, tiles: TileSet) -> Callable[[int], float]:
    """A function that runs training step ``s`` of ``cfg`` and returns its seconds."""
    model = build_model(cfg.vit, seed=0)
    net, loss_of = make_task(cfg, "supervised", model, tiles)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(s: int) -> float:
        started = time.perf_counter()
        with autocast(cfg.precision):
            loss = loss_of(s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - started

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    recipe = DEFAULT_CONFIG
    torch.set_num_threads(recipe.threads or 1)
    images, targets = tile_arrays(recipe.domains[:1], 2 * recipe.batch_size, recipe.vit.img_size)
    tiles = TileSet(images, targets)
    arms = {"every patch": dataclasses.replace(recipe, patch_keep=1.0),
            f"keep {recipe.patch_keep}": recipe}
    steps = {name: stepper(cfg, tiles) for name, cfg in arms.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in steps.values():
        step(0)  # warm-up
    for r in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step(r + 1))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base, ours = medians.values()
    print(f"default recipe step ({recipe.precision}, {recipe.threads} threads, batch "
          f"{recipe.batch_size}, {recipe.vit.img_size} px), median of {args.rounds}:")
    for name, m in medians.items():
        print(f"  {name:>12}: {m:.3f} s")
    print(f"  ratio: {ours / base:.2f}x the time of a step with every patch")
    if args.json:
        args.json.write_text(json.dumps({"median_s": medians, "ratio": ours / base,
                                         "rounds": args.rounds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
