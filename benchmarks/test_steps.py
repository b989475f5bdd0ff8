"""Training-step and sampling timings of every registered family (pytest-benchmark).

    pytest benchmarks/ --benchmark-only                          # on $GENBENCH_DEVICE (default: auto)
    pytest benchmarks/ --benchmark-only --benchmark-autosave     # save the run under .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare      # compare with the last saved run

For each family, at the smoke and quick configurations: one full ``train_step`` (every optimizer of
the model steps once; batch 128 at quick, the smoke profile's own batch size at smoke) and one
``sample(64)``. Steps run in train mode under $GENBENCH_PRECISION (fp32 or bf16 autocast); sampling
runs in eval mode under inference mode in fp32, as ``bench run`` evaluates.

Step inputs are fake uint8 batches of MNIST's shape and ink density, not MNIST: a step's cost does
not depend on the pixel values, and loading MNIST would add seconds to every run. Each timed call
ends with a device synchronize, so a CUDA time covers the kernels, not just their launch. Warm-up
calls (allocator, cudnn autotuning, a flow's data-dependent init) run before timing. A call slower
than SLOW_CALL_S (PixelCNN's 784 sequential sampling passes on a CPU) is timed once, not in
calibrated rounds.

Each benchmark's extra_info: images_per_s (images per call / median seconds per call), device,
precision, batch_size, parameters.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from genbench import models
from genbench.bench.engine.device import autocast, prepare_model
from genbench.bench.engine.optim import Optimizers
from genbench.bench.engine.timing import device_name, synchronize
from genbench.models.base import GenerativeModel

PROFILES = ("smoke", "quick")
QUICK_BATCH = 128
N_SAMPLES = 64
WARMUP_CALLS = 3
SLOW_CALL_S = 2.0
INK = 0.19  # fraction of MNIST pixels that are not background


@dataclasses.dataclass
class Case:
    """A timed call and what it is: ``fn`` does one step (or draws the samples) and synchronizes."""

    fn: Callable[[], Any]
    images: int  # images per call
    model: GenerativeModel
    optimizers: Optimizers | None
    info: dict[str, Any]


def fake_batch(n: int, shape: tuple[int, int, int], device: torch.device, seed: int = 0) -> Tensor:
    """uint8 images of MNIST's shape and ink density: 0 background, 255 strokes at random pixels."""
    g = torch.Generator().manual_seed(seed)
    ink = torch.rand(n, *shape, generator=g) < INK  # (n, C, H, W) bool
    return (ink.to(torch.uint8) * 255).to(device)


def _build(name: str, profile: str, device: torch.device, precision: str, compile: bool = False):
    torch.manual_seed(0)
    model, cfg = models.build(name, profile)
    prepare_model(model, device, compile=compile)
    return model, cfg


def _info(model: GenerativeModel, device: torch.device, precision: str, batch_size: int) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "precision": precision,
        "batch_size": batch_size,
        "parameters": model.num_parameters(),
    }


def step_case(name: str, profile: str, device: torch.device, precision: str, compile: bool = False) -> Case:
    """One ``train_step`` of ``name`` at ``profile``: batch 128 at quick, the profile's own elsewhere;
    with ``compile``, the step ``bench run --compile`` trains with (compiled during the warm-up)."""
    model, cfg = _build(name, profile, device, precision, compile)
    batch_size = QUICK_BATCH if profile == "quick" else cfg.batch_size
    x = fake_batch(batch_size, model.image_shape, device)  # (B, C, H, W) uint8
    optimizers = Optimizers(model, cfg, total_steps=1000, device=device)
    model.train()

    def step() -> dict[str, Tensor]:
        with autocast(device, precision):
            terms = model.train_step(x, optimizers, step=1000)  # past any warm-up inside the objective
        synchronize(device)
        return terms

    info = _info(model, device, precision, batch_size) | {"compile": compile}
    return Case(step, batch_size, model, optimizers, info)


def sample_case(name: str, profile: str, device: torch.device, n: int = N_SAMPLES) -> Case:
    """``sample(n)`` of a freshly initialised ``name`` at ``profile`` (untrained weights cost the same)."""
    model, _ = _build(name, profile, device, "fp32")
    model.eval()

    def sample() -> Tensor:
        with torch.inference_mode():
            images = model.sample(n)  # (n, C, H, W) uint8
        synchronize(device)
        return images

    return Case(sample, n, model, None, _info(model, device, "fp32", n))


def measure(benchmark, case: Case) -> Any:
    """Warm up, time ``case.fn`` with the benchmark fixture, record images/s and the case's facts."""
    start = time.perf_counter()
    case.fn()  # the first warm-up call doubles as a probe of the call's cost
    if time.perf_counter() - start > SLOW_CALL_S:
        result = benchmark.pedantic(case.fn, rounds=1, iterations=1, warmup_rounds=0)
    else:
        for _ in range(WARMUP_CALLS - 1):
            case.fn()
        result = benchmark(case.fn)
    benchmark.extra_info.update(case.info)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable: nothing was timed
    if stats is not None:
        benchmark.extra_info["images_per_s"] = case.images / stats.stats.median
    return result


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_train_step(benchmark, device, precision, name, profile):
    benchmark.group = f"train_step {profile}"
    terms = measure(benchmark, step_case(name, profile, device, precision))
    assert "loss" in terms


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_train_step_compiled(benchmark, device, precision, name):
    """The quick step under torch.compile, beside test_train_step's eager one in the same group."""
    benchmark.group = "train_step quick"
    case = step_case(name, "quick", device, precision, compile=True)
    case.fn()  # compiles: seconds, which measure's probe must not take for the step's cost
    terms = measure(benchmark, case)
    assert "loss" in terms


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_sample(benchmark, device, name, profile):
    benchmark.group = f"sample({N_SAMPLES}) {profile}"
    images = measure(benchmark, sample_case(name, profile, device))
    assert images.shape[0] == N_SAMPLES and images.dtype == torch.uint8
