"""Metric registry types, the evaluation protocol of each profile, and the context metrics read.

A metric declares what it needs from a model (``NEEDS``) and the numbers it produces (``Output``s
of ``genbench.core.schema``: label, unit, direction, section, order); the evaluator runs only the
metrics a model supports and records "n/a" with the reason for the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.core.schema import Output, Value

NEEDS = ("samples", "likelihood", "importance_weighted", "reconstruct")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol. It belongs to the profile name, not to the model, so that every
    model of one profile is measured identically; the options that change a number (sample count,
    IWAE k, allowing rank-deficient FID, the Inception weights) are recorded here and reused on
    resume."""

    n_test: int | None = None  # test images for likelihood and reconstruction; None = the whole test set
    iwae_k: int = 1000  # importance samples of the IWAE estimate
    iwae_images: int | None = None  # the first this many of the same test subset; None = n_test
    n_samples: int = 10_000  # generated samples for sample-quality metrics
    batch_size: int = 256
    feature_networks: tuple[str, ...] = ("mnist", "inception")
    subset_seed: int = 0  # the seeded random test subset (the same for every model and metric)
    allow_few_samples: bool = False  # FID with fewer samples than feature dimensions
    inception_weights: str | None = None  # torch-fidelity's Inception weights file; None: found locally

    def __post_init__(self) -> None:
        for name in ("n_test", "iwae_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("iwae_k", "n_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


EVAL_PROFILES: dict[str, EvalConfig] = {
    "smoke": EvalConfig(n_test=256, iwae_k=8, iwae_images=64, n_samples=256, feature_networks=("mnist",)),
    "quick": EvalConfig(
        n_test=2000, iwae_k=100, iwae_images=500, n_samples=1000, feature_networks=("mnist",)
    ),
    "full": EvalConfig(n_test=None, iwae_k=1000, iwae_images=1000, n_samples=10_000),
}


def subset_indices(total: int, n: int | None, seed: int) -> Tensor | None:
    """The first n of a fixed, seeded permutation of range(total); None when n covers everything.
    MNIST's test set is ordered (its first 5,000 images are the cleaner half), so a prefix would
    flatter every partial evaluation."""
    if n is None or n >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def describe_subset(total: int, n: int | None, seed: int) -> str:
    return (
        f"all {total}" if subset_indices(total, n, seed) is None else f"random {n} of {total} (seed {seed})"
    )


@dataclasses.dataclass
class EvalContext:
    """What a metric may read. Samples are generated once per sample mode, lazily, and shared by
    all metrics."""

    model: Any  # GenerativeModel in eval mode
    data: Any  # bench.data.MNIST
    config: EvalConfig
    device: torch.device
    seed: int
    run_dir: Path | None = None
    cache_dir: Path | None = None  # real-data feature statistics
    train_summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # from bench.train
    mode: str | None = None  # the sample mode metrics see now; None: the model's default
    _samples: dict[str | None, Tensor] = dataclasses.field(default_factory=dict)
    sampling_seconds: dict[str | None, float] = dataclasses.field(default_factory=dict)

    def test_images(self, n: int | None = None) -> Tensor:
        """The first n images (default: config.n_test) of the fixed random test subset: every model
        and metric of a protocol sees the same images."""
        test = self.data.test
        index = subset_indices(len(test), n if n is not None else self.config.n_test, self.config.subset_seed)
        return test if index is None else test[index.to(test.device)]

    def per_image(
        self, fn: Callable[[Tensor], Tensor], images: Tensor, batch_size: int | None = None
    ) -> Tensor:
        """fn over batches of images (moved to the device) under inference mode; results concatenated
        in float64 on the CPU so long sums do not lose precision."""
        size = batch_size or self.config.batch_size
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), size):
                out.append(fn(images[start : start + size].to(self.device)).double().cpu())
        return torch.cat(out)

    def samples(self) -> Tensor:
        """config.n_samples generated uint8 images (CPU) of the current sample mode, timed; the
        same for every metric. Each mode starts from the run's seed."""
        if self.mode not in self._samples:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
            chunks, start = [], time.perf_counter()
            with torch.inference_mode():
                remaining = self.config.n_samples
                while remaining > 0:
                    n = min(self.config.batch_size, remaining)
                    chunks.append(self.model.sample(n, generator=generator, mode=self.mode))
                    remaining -= n
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            self.sampling_seconds[self.mode] = time.perf_counter() - start
            self._samples[self.mode] = torch.cat(chunks).cpu()
        return self._samples[self.mode]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    needs: frozenset[str]
    outputs: tuple[Output, ...]
    compute: Callable[[EvalContext], dict[str, Value]]


METRICS: dict[str, Metric] = {}


def register_metric(name: str, needs: tuple[str, ...], outputs: tuple[Output, ...]):
    """Decorator for ``compute(ctx) -> {output key: Value}``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"metric {name!r} needs unknown capabilities {sorted(unknown)}; known: {NEEDS}")
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    if not outputs:
        raise ValueError(f"metric {name!r} declares no outputs")

    def decorate(fn: Callable[[EvalContext], dict[str, Value]]):
        METRICS[name] = Metric(name, frozenset(needs), tuple(outputs), fn)
        return fn

    return decorate


def missing_capability(model, needs: frozenset[str]) -> str | None:
    """The reason a model cannot provide what a metric needs, or None if it can."""
    if "likelihood" in needs and model.likelihood is None:
        return f"{model.name} has no likelihood"
    if "importance_weighted" in needs and not model.importance_weighted:
        if model.likelihood is None:
            return f"{model.name} has no likelihood"
        return f"{model.name} has no importance-weighted estimate ({model.likelihood} likelihood)"
    if "reconstruct" in needs and not model.can_reconstruct:
        return f"{model.name} cannot reconstruct"
    return None
