"""What a run's budget buys, and how fast its device can go: the loop's side of equal compute.

At the start of a run the loop counts the FLOPs of one training step on the real model at the
run's batch size (``genbench.metrics.compute``), and from them the steps a FLOP budget buys:
``ceil(budget / flops_per_step)``, the same on every machine. A budget, in FLOPs or in seconds,
decides the steps by itself: the profile's epochs and max_steps do not cap it.

The peak is what the device's achieved FLOP/s is compared with: a short measurement on the CPU
(the best of a few large fp32 matmuls on the run's threads), the datasheet's dense peak for the
GPUs in ``DATASHEET``, and the same measurement for any other GPU, each labelled as what it is.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from genbench.bench.engine.timing import hardware_name, synchronize, threads_text
from genbench.metrics.compute import training_step_flops
from genbench.models.base import GenerativeModel, TrainConfig

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, by a substring of the device name (the
# first match wins): "fp32" is the CUDA cores' FP32 rate (TF32 convolutions can exceed it), "bf16"
# the tensor cores' BF16 rate.
DATASHEET: dict[str, dict[str, float]] = {
    "H200": {"fp32": 67e12, "bf16": 989e12},
    "H100 PCIe": {"fp32": 51e12, "bf16": 756e12},
    "H100": {"fp32": 67e12, "bf16": 989e12},
    "A100": {"fp32": 19.5e12, "bf16": 312e12},
}
PEAK_MATMUL_SIZE = 1024  # n of the n x n matmuls timed: 2.1 GFLOP each, past the CPU's caches
PEAK_REPEATS = 3  # timed matmuls after one warm-up; the fastest is the peak


def planned_steps(cfg: TrainConfig, steps_per_epoch: int, flops_per_step: int) -> int | float:
    """The steps a run trains: those a compute budget buys; unbounded under a time budget (which
    ends training at a step boundary); else the profile's epochs, capped by max_steps."""
    if cfg.compute_budget is not None:
        return rung_steps(cfg.compute_rungs, flops_per_step)[-1]
    if cfg.time_budget_s is not None:
        return math.inf
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def rung_steps(rungs: tuple[float, ...], flops_per_step: int) -> list[int]:
    """The step at which the counted training FLOPs first reach each rung: ceil(rung / flops_per_step)."""
    return [math.ceil(rung / flops_per_step) for rung in rungs]


def count_step(model: GenerativeModel, batch: torch.Tensor) -> dict[str, Any]:
    """The training-step count the run records (train summary keys), on a real batch of the run's
    size. The model, its RNG streams and everything else the loop holds stay untouched."""
    total, per_group = training_step_flops(model, batch)
    return {"train_flops_per_step": total, "train_flops_per_group": per_group}


def measure_peak(device: torch.device, precision: str) -> tuple[float, dict[str, Any]]:
    """The device's peak FLOP/s for ``precision``, and how it was obtained."""
    name = hardware_name(device)
    if device.type == "cuda":
        match = next((key for key in DATASHEET if key in name), None)
        if match is not None:
            source = (
                f"datasheet dense {'BF16 tensor-core' if precision == 'bf16' else 'FP32'} peak of {match}"
            )
            return DATASHEET[match][precision], {"source": source, "hardware": name}
    dtype = torch.bfloat16 if precision == "bf16" and device.type != "cpu" else torch.float32
    n = PEAK_MATMUL_SIZE
    generator = torch.Generator(device=device).manual_seed(0)  # the run's RNG streams stay untouched
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
    times = []
    for _ in range(PEAK_REPEATS + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    threads = f" on {threads_text(torch.get_num_threads())}" if device.type == "cpu" else ""
    protocol = {
        "source": f"measured: fastest of {PEAK_REPEATS} {n}x{n} {str(dtype).removeprefix('torch.')} "
        f"matmuls after one warm-up{threads}",
        "hardware": name,
    }
    return 2 * n**3 / min(times[1:]), protocol
