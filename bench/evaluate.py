"""Evaluation: run every registered metric a model supports, record "n/a" with the reason for the
rest, and write the sample artifacts. Evaluation runs in fp32 whatever the training precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from genbench.bench.data import MNIST
from genbench.core.errors import UserError
from genbench.core.files import save_image_grid, save_torch
from genbench.metrics import METRICS, EvalContext, Value, missing_capability
from genbench.metrics.base import EvalConfig, entry
from genbench.models.base import GenerativeModel


class SampleCollapse(UserError):
    """Every sample is (nearly) the same image."""


def evaluate(
    model: GenerativeModel,
    data: MNIST,
    config: EvalConfig,
    device: torch.device,
    seed: int,
    train_summary: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """{metric key: entry} for every output of every registered metric (see .notes in README)."""
    model.eval()
    ctx = EvalContext(
        model=model,
        data=data,
        config=config,
        device=device,
        seed=seed,
        run_dir=run_dir,
        cache_dir=cache_dir,
        train_summary=dict(train_summary or {}),
    )
    check_not_collapsed(model, ctx.samples(), data.test)
    entries: dict[str, dict[str, Any]] = {}
    for metric in METRICS.values():
        # Each metric starts from the same seed, so its noise (dequantization, posterior samples) does
        # not depend on which metrics ran before it or on what a cache saved them from computing.
        torch.manual_seed(seed)
        reason = missing_capability(model, metric.needs)
        values = {o.key: Value(None, na=reason) for o in metric.outputs} if reason else metric.compute(ctx)
        for output in metric.outputs:
            if output.key not in values:
                raise RuntimeError(f"metric {metric.name!r} did not return {output.key!r}")
            entries[output.key] = entry(output, values[output.key])
    if run_dir is not None:
        write_sample_artifacts(model, ctx, run_dir)
    return entries


# Samples' pixel spread below 0.5% of the test set's: one image, repeated. A smoke GAN after 30 steps
# is at 2.5-3.5%, an untrained one at 0.3%.
COLLAPSE_SPREAD = 0.005


def check_not_collapsed(model: GenerativeModel, samples: torch.Tensor, reference: torch.Tensor) -> None:
    """Refuse to score a model whose samples are (nearly) all the same image (a collapsed GAN):
    FID and IS of such a set are numbers, but not a measurement of a generative model."""
    if len(samples) < 2:
        return
    spread = samples.float().std(0).mean()  # per-pixel std across samples, averaged over pixels
    reference_spread = reference[: len(samples)].float().std(0).mean().cpu()
    ratio = float(spread / reference_spread)
    if ratio < COLLAPSE_SPREAD:
        raise SampleCollapse(
            f"{model.name}: its {len(samples)} samples have collapsed to (nearly) one image (pixel spread "
            f"{ratio:.2%} of the test set's); no metrics reported. Try another seed or a lower --lr"
        )


def write_sample_artifacts(model: GenerativeModel, ctx: EvalContext, run_dir: Path) -> None:
    grid = ctx.samples()[:64]  # (<=64, C, H, W) uint8, the first of the evaluated samples
    save_image_grid(run_dir / "samples.png", grid)
    save_torch(run_dir / "samples.pt", grid.clone())
    interpolate = getattr(model, "latent_interpolation", None)
    if interpolate is not None:
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1)
        with torch.inference_mode():
            strips = interpolate(8, 10, generator=generator).cpu()  # (8, 10, C, H, W)
        save_image_grid(run_dir / "interpolation.png", strips.flatten(0, 1), nrow=strips.shape[1])
