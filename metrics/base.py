"""Metric registry types, the evaluation protocol of each profile, and the context metrics read."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

NEEDS = ("samples", "likelihood", "bound", "reconstruct")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol. It belongs to the profile name, not to the model, so that every
    model of one profile is measured identically."""

    n_test: int | None = None  # test images for likelihood and reconstruction; None = all 10,000
    iwae_k: int = 1000  # importance samples of the IWAE estimate
    iwae_images: int | None = None  # test images for IWAE; None = n_test
    n_samples: int = 10_000  # generated samples for sample-quality metrics
    batch_size: int = 256
    feature_networks: tuple[str, ...] = ("mnist", "inception")


EVAL_PROFILES: dict[str, EvalConfig] = {
    "smoke": EvalConfig(n_test=256, iwae_k=8, iwae_images=64, n_samples=256, feature_networks=("mnist",)),
    "quick": EvalConfig(
        n_test=2000, iwae_k=100, iwae_images=500, n_samples=1000, feature_networks=("mnist",)
    ),
    "full": EvalConfig(n_test=None, iwae_k=1000, iwae_images=1000, n_samples=10_000),
}


@dataclasses.dataclass(frozen=True)
class Output:
    """One number a metric produces."""

    key: str  # key in metrics.json, e.g. "fid_mnist"
    label: str  # column header, e.g. "FID (mnist)"
    unit: str
    higher_is_better: bool | None  # None: neither (parameter count)


@dataclasses.dataclass(frozen=True)
class Value:
    value: float | None
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)
    na: str | None = None  # the reason when value is None


def entry(output: Output, value: Value) -> dict[str, Any]:
    """The metrics.json form of one value: the number with its label, unit, direction, protocol,
    and the reason when it is n/a."""
    out = {
        "value": value.value,
        "label": output.label,
        "unit": output.unit,
        "higher_is_better": output.higher_is_better,
        "protocol": value.protocol,
    }
    if value.value is None:
        out["na"] = value.na or "not computed"
    return out


@dataclasses.dataclass
class EvalContext:
    """What a metric may read. Samples are generated once, lazily, and shared by all metrics."""

    model: Any  # GenerativeModel in eval mode
    data: Any  # bench.data.MNIST
    config: EvalConfig
    device: torch.device
    seed: int
    run_dir: Path | None = None
    cache_dir: Path | None = None  # torch-fidelity's statistics cache
    train_summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # from bench.train
    _samples: Tensor | None = None
    sampling_seconds: float | None = None

    def test_images(self, n: int | None = None) -> Tensor:
        limit = n if n is not None else self.config.n_test
        test = self.data.test
        return test if limit is None else test[:limit]

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
        """config.n_samples generated uint8 images (CPU), timed; the same for every metric."""
        if self._samples is None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
            chunks, start = [], time.perf_counter()
            with torch.inference_mode():
                remaining = self.config.n_samples
                while remaining > 0:
                    n = min(self.config.batch_size, remaining)
                    chunks.append(self.model.sample(n, generator=generator))
                    remaining -= n
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            self.sampling_seconds = time.perf_counter() - start
            self._samples = torch.cat(chunks).cpu()
        return self._samples


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
    if "bound" in needs and model.likelihood != "bound":
        return (
            f"{model.name} reports an exact likelihood, not a bound"
            if model.likelihood
            else (f"{model.name} has no likelihood")
        )
    if "reconstruct" in needs and not model.can_reconstruct:
        return f"{model.name} cannot reconstruct"
    return None
