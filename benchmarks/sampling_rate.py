"""Sampling at the network's speed? Per family and sample mode, the FLOP/s achieved while sampling
against those achieved while training, in one process at the same threads.

    python benchmarks/sampling_rate.py [--models vae,gan,...] [--threads 2] [--batch 256]

For each family (quick profile, fp32, untrained weights: a sampler's cost does not depend on them):
the counted FLOPs per sample in each mode (genbench.metrics.compute.sample_flops, the sampler as it
runs) times the images/s of one ``sample(--batch)`` call after a small warm-up call, under inference
mode as the evaluation draws them (metrics.base.sample_batch); and the counted FLOPs per training
step over the wall time of --steps steps after one warm-up (the profile's batch). Counted FLOPs are
matmuls and convolutions only, so a ratio well under 1 means time spent outside the network's
counted work: elementwise ops, Python per step or pixel, small tensors, host syncs. Wall-clock:
other processes on the machine lower both rates; they are measured back to back.
"""

from __future__ import annotations

import argparse
import time

import torch

from genbench import models
from genbench.bench.engine.budget import count_step
from genbench.bench.engine.optim import Optimizers
from genbench.metrics.base import sample_batch
from genbench.metrics.compute import sample_flops

INK = 0.19
WARMUP_SAMPLES = 4


def train_rate(model, cfg, steps: int) -> float:
    x = torch.rand(cfg.batch_size, *model.image_shape, generator=torch.Generator().manual_seed(0)) < INK
    x = x.to(torch.uint8) * 255  # (B, C, H, W)
    per_step = count_step(model, x)["train_flops_per_step"]
    optimizers = Optimizers(model, cfg, total_steps=steps + 1, device=torch.device("cpu"))
    model.train()
    model.train_step(x, optimizers, 0)
    start = time.perf_counter()
    for step in range(steps):
        model.train_step(x, optimizers, 1 + step)
    return per_step * steps / (time.perf_counter() - start)


def sample_rate(model, mode: str, batch: int) -> tuple[float, float]:
    """(images/s, FLOP/s) of one sample(batch) call as the evaluation draws it."""
    per_sample = sample_flops(model, mode)
    model.eval()
    sample_batch(model, 0, WARMUP_SAMPLES, 0, mode, model.device)
    start = time.perf_counter()
    sample_batch(model, 1, batch, 0, mode, model.device)
    images_per_s = batch / (time.perf_counter() - start)
    return images_per_s, images_per_s * per_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(sorted(models.MODELS)))  # every registered family
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="samples per call (quick evaluation's: 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"quick profile, fp32, {args.threads} threads, sample({args.batch}) after a warm-up call\n")
    print("| model | mode | sample img/s | sample FLOP/s | train FLOP/s | sample / train |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, cfg = models.build(name, "quick")
        train = train_rate(model, cfg, args.steps)
        for mode in model.sample_modes():
            images_per_s, rate = sample_rate(model, mode, args.batch)
            print(
                f"| {name} | {mode} | {images_per_s:,.1f} | {rate:.3g} | {train:.3g} | {rate / train:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
