"""Metric registry types, the evaluation protocol of each profile, and the context metrics read.

A metric declares what it needs from a model (``NEEDS``) and the numbers it produces (``Output``s
of ``genbench.core.schema``: label, unit, direction, section, order); the evaluator runs only the
metrics a model supports and records "n/a" with the reason for the others.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genbench.core.distributed import derive_seed, map_batches, rank, world_size
from genbench.core.log import progress_shown
from genbench.core.schema import Output, Value
from genbench.models.plugins import check_samples

logger = logging.getLogger(__name__)
NEEDS = ("samples", "likelihood", "importance_weighted", "reconstruct", "decoder")


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
    # Samples drawn per model.sample call on CUDA; None (and every other device): batch_size. A
    # launch-bound sampler takes as long per call whatever the batch (PixelCNN: ~150 kernels per
    # pixel, ~1.9 s per 784-pixel sweep), so a GPU wants few, large calls; a CPU gains nothing and
    # pays the memory (PixelCNN's caches: ~5.6 MB per image at the full size). A seeded sampler's
    # images depend on its batches, as they do on the device: values record the batch they used.
    cuda_sample_batch_size: int | None = None
    # Feature networks for sample quality; None: the dataset's defaults for the profile (bench.engine.data),
    # resolved by bench.planning.plan.plan before a run starts and recorded in config.json.
    feature_networks: tuple[str, ...] | None = None
    subset_seed: int = 0  # the seeded random test subset (the same for every model and metric)
    allow_few_samples: bool = False  # FID with fewer samples than feature dimensions
    inception_weights: str | None = None  # torch-fidelity's Inception weights file; None: found locally
    # Annealed importance sampling (metrics/ais.py) of models with a decoder p(x | z): the first
    # ais_images of the test subset, ais_chains chains each, ais_steps intermediate distributions,
    # HMC with ais_leapfrog leapfrog steps; BDMC on bdmc_images images drawn from the model (0: none);
    # a decoder's free noise scale (the GAN's σ) chosen on ais_select_images validation images.
    ais_images: int = 100
    ais_chains: int = 16
    ais_steps: int = 1000
    ais_leapfrog: int = 10
    bdmc_images: int = 0
    ais_select_images: int = 20
    # Generated samples for FID and IS at each rung of a compute ladder (bench.engine.ladder), at most
    # n_samples.
    ladder_samples: int = 2000

    def __post_init__(self) -> None:
        for name in ("n_test", "iwae_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        ais = ("ais_images", "ais_chains", "ais_steps", "ais_leapfrog", "ais_select_images")
        for name in ("iwae_k", "n_samples", "batch_size", "ladder_samples", *ais):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.bdmc_images < 0:
            raise ValueError(f"bdmc_images must be non-negative, got {self.bdmc_images}")
        if self.cuda_sample_batch_size is not None and self.cuda_sample_batch_size < 1:
            raise ValueError(f"cuda_sample_batch_size must be at least 1, got {self.cuda_sample_batch_size}")

    def sample_batch_size(self, device: torch.device) -> int:
        """Samples per model.sample call on ``device`` (see cuda_sample_batch_size)."""
        if torch.device(device).type == "cuda" and self.cuda_sample_batch_size is not None:
            return self.cuda_sample_batch_size
        return self.batch_size


EVAL_PROFILES: dict[str, EvalConfig] = {
    "smoke": EvalConfig(
        n_test=256,
        iwae_k=8,
        iwae_images=64,
        n_samples=256,
        ais_images=8,
        ais_chains=4,
        ais_steps=20,
        ais_leapfrog=2,
        bdmc_images=4,
        ais_select_images=4,
        ladder_samples=256,
    ),
    # Bounded so that the main job (five families on one compute ladder) evaluates in minutes on 2 CPU
    # cores: IWAE on 100 images (50,000 flow passes took 3 minutes on 500) and AIS on 20, each with
    # its standard error; AIS at about 90k decoder evaluations (forward and backward) per image
    "quick": EvalConfig(
        n_test=2000,
        iwae_k=100,
        iwae_images=100,
        n_samples=1000,
        ais_images=20,
        ais_chains=4,
        ais_steps=100,
        ais_leapfrog=3,
        bdmc_images=10,
        ais_select_images=10,
        ladder_samples=500,
    ),
    # 5 sampling calls on a GPU instead of 40 (PixelCNN: ~11 GB of caches at the full size); AIS at
    # Wu et al.'s budget (16 chains, 10,000 intermediate distributions, 10 leapfrog steps)
    "full": EvalConfig(
        n_test=None,
        iwae_k=1000,
        iwae_images=1000,
        n_samples=10_000,
        cuda_sample_batch_size=2000,
        ais_images=500,
        ais_chains=16,
        ais_steps=10_000,
        ais_leapfrog=10,
        bdmc_images=100,
        ais_select_images=100,
    ),
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


def sample_batch(
    model: Any, index: int, size: int, seed: int, mode: str | None, device: torch.device
) -> Tensor:
    """Batch ``index`` of a model's samples, uint8 (size, C, H, W) on the CPU, from a generator seeded
    by (seed, index): any batch can be drawn alone (on any rank, by `bench sample`) and is the same."""
    generator = torch.Generator(device=device).manual_seed(derive_seed("samples", seed, index))
    with torch.inference_mode():
        return check_samples(model, model.sample(size, generator=generator, mode=mode), size).cpu()


def _timed(drawn: list[tuple[Tensor, float]], ranks: int) -> tuple[int, float]:
    """(images, seconds) of sampling batches drawn by ``ranks`` ranks in parallel (batch i by rank
    i mod ranks): each rank's first batch is its warm-up (allocator, kernels, lazy caches) and is
    excluded where it drew several; the ranks' images add up over the slowest rank's time."""
    images, seconds = 0, 0.0
    for r in range(ranks):
        mine = drawn[r::ranks][1:] or drawn[r::ranks][:1]
        images += sum(len(batch) for batch, _ in mine)
        seconds = max(seconds, sum(t for _, t in mine))
    return images, seconds


@dataclasses.dataclass
class EvalContext:
    """What a metric may read. Samples are generated once per sample mode, lazily, and shared by
    all metrics."""

    model: Any  # GenerativeModel in eval mode
    data: Any  # bench.engine.data.Dataset
    config: EvalConfig
    device: torch.device
    seed: int
    run_dir: Path | None = None
    cache_dir: Path | None = None  # real-data feature statistics
    train_summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # from bench.engine.train
    mode: str | None = None  # the sample mode metrics see now; None: the model's default
    progress: bool = False  # a progress bar (a start line in a log) for each batched step
    _samples: dict[str | None, Tensor] = dataclasses.field(default_factory=dict)
    # Per mode: (images timed, seconds). The first batch is the warm-up (allocator, kernels, lazy
    # caches) and is excluded when there are several; a single batch is timed as it is.
    sampling_timed: dict[str | None, tuple[int, float]] = dataclasses.field(default_factory=dict)

    def test_images(self, n: int | None = None) -> Tensor:
        """The first n images (default: config.n_test) of the fixed random test subset: every model
        and metric of a protocol sees the same images."""
        test = self.data.test
        index = subset_indices(len(test), n if n is not None else self.config.n_test, self.config.subset_seed)
        return test if index is None else test[index.to(test.device)]

    def bar(self, what: str, total: int) -> tqdm:
        """A progress bar over ``total`` images on a terminal (rank 0); in a log, one line saying
        what starts; nothing without ``progress``."""
        show, terminal = self.progress and rank() == 0 and progress_shown(), sys.stderr.isatty()
        if show and not terminal:
            logger.info(f"evaluation: {what}, {total} images")
        return tqdm(total=total, desc=what, unit="img", leave=False, disable=not (show and terminal))

    def per_image(
        self,
        fn: Callable[[Tensor], Tensor],
        images: Tensor,
        batch_size: int | None = None,
        what: str = "evaluating",
    ) -> Tensor:
        """fn over batches of images (moved to the device) under inference mode; results concatenated
        in float64 on the CPU so long sums do not lose precision. Batch i draws its noise
        (dequantization, posterior samples) from (seed, i): under torchrun the batches are split
        across ranks and gathered, and every per-image value is a single process's."""
        size = batch_size or self.config.batch_size

        def batch(index: int, start: int, stop: int) -> Tensor:
            torch.manual_seed(derive_seed("per_image", self.seed, index))
            with torch.inference_mode():
                out = fn(images[start:stop].to(self.device)).double().cpu()
            progress.update(stop - start)
            return out

        with self.bar(what, len(images)) as progress:
            return torch.cat(map_batches(batch, len(images), size))

    def samples(self) -> Tensor:
        """config.n_samples generated uint8 images (CPU) of the current sample mode, timed; the
        same for every metric and mode (``sample_batch``). Under torchrun the batches are split
        across ranks and gathered: the same images, drawn N times faster."""
        if self.mode not in self._samples:

            def batch(index: int, start: int, stop: int) -> tuple[Tensor, float]:
                begin = self._synchronized_clock()
                images = sample_batch(self.model, index, stop - start, self.seed, self.mode, self.device)
                progress.update(stop - start)
                return images, self._synchronized_clock() - begin

            what = f"sampling [{self.mode}]" if self.mode else "sampling"
            with self.bar(what, self.config.n_samples) as progress:
                drawn = map_batches(batch, self.config.n_samples, self.config.sample_batch_size(self.device))
            self._samples[self.mode] = torch.cat([images for images, _ in drawn])
            self.sampling_timed[self.mode] = _timed(drawn, world_size())
        return self._samples[self.mode]

    def _synchronized_clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


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
    if "decoder" in needs and not model.has_decoder:
        return f"{model.name} has no latent decoder p(x | z) to anneal through"
    if "reconstruct" in needs and not model.can_reconstruct:
        return f"{model.name} cannot reconstruct"
    return None
