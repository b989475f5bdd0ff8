"""Every family's compute at a profile: FLOPs per training step, per sample (each sample mode) and per
likelihood image, counted as `bench run` counts them (genbench.metrics.compute), and the FLOP/s a few
timed training steps achieve on this machine, as a fraction of its peak (genbench.bench.engine.budget).

    python benchmarks/flops_table.py                       # quick profile, every family, 3 timed steps
    python benchmarks/flops_table.py --models vae,gan --profile smoke --steps 5 --threads 2

Counts depend only on the model and the batch (the profile's own batch size): the same on every
machine and under any load. FLOP/s and utilization are wall-clock measurements of --steps training
steps after one warm-up step, on fake uint8 batches of MNIST's shape (a step's cost does not depend
on the pixels): other processes on the machine lower them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import pandas as pd
import torch

from genbench import models
from genbench.bench.engine.budget import count_step, measure_peak
from genbench.bench.engine.optim import Optimizers
from genbench.bench.engine.timing import device_name, synchronize
from genbench.metrics.compute import likelihood_flops, sample_flops
from genbench.models.base import PROFILE_NAMES

INK = 0.19  # fraction of MNIST pixels that are not background


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    batch_size: int
    flops_per_step: int
    flops_per_sample: dict[str, float]  # per sample mode
    flops_per_likelihood_image: float | None  # None: no likelihood
    flops_per_s: float
    utilization: float


def fake_batch(n: int, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    ink = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) < INK  # (n, C, H, W)
    return (ink.to(torch.uint8) * 255).to(device)


def achieved_rate(step: Callable[[], object], flops_per_step: int, steps: int, device: torch.device) -> float:
    """Counted FLOPs over the wall seconds of ``steps`` calls of ``step`` after one warm-up call."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return flops_per_step * steps / (time.perf_counter() - start)


def measure(name: str, profile: str, steps: int, device: torch.device, peak: float) -> Row:
    torch.manual_seed(0)
    model, cfg = models.build(name, profile)
    model.to(device)
    x = fake_batch(cfg.batch_size, model.image_shape, device)
    per_step = count_step(model, x)["train_flops_per_step"]
    per_sample = {mode: sample_flops(model, mode) for mode in model.sample_modes()}
    per_image = likelihood_flops(model, x[:1]) if model.likelihood is not None else None
    optimizers = Optimizers(model, cfg, total_steps=steps + 1, device=device)
    model.train()
    rate = achieved_rate(lambda: model.train_step(x, optimizers, 0), per_step, steps, device)
    return Row(name, cfg.batch_size, per_step, per_sample, per_image, rate, rate / peak)


def table(rows: list[Row]) -> pd.DataFrame:
    def modes(row: Row) -> str:
        return ", ".join(f"{mode} {flops:.3g}" for mode, flops in row.flops_per_sample.items())

    return pd.DataFrame(
        {
            "model": [r.model for r in rows],
            "batch": [r.batch_size for r in rows],
            "FLOPs/step": [f"{r.flops_per_step:.3g}" for r in rows],
            "FLOPs/sample": [modes(r) for r in rows],
            "FLOPs/likelihood image": [
                f"{r.flops_per_likelihood_image:.3g}" if r.flops_per_likelihood_image else "n/a" for r in rows
            ],
            "train FLOP/s": [f"{r.flops_per_s:.3g}" for r in rows],
            "utilization": [f"{r.utilization:.1%}" for r in rows],
        }
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(sorted(models.MODELS)))
    parser.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per family")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak, how = measure_peak(device, "fp32")
    rows = [measure(name, args.profile, args.steps, device, peak) for name in args.models.split(",")]
    return (
        f"{args.profile} profile on {device_name(device)}, fp32; peak {peak:.3g} FLOP/s ({how['source']}); "
        f"FLOP/s over {args.steps} timed steps after one warm-up\n\n" + table(rows).to_markdown(index=False)
    )


if __name__ == "__main__":
    print(main())
