"""Evaluation: run every registered metric a model supports, record "n/a" with the reason for the
rest, state the run-level protocol, and write the sample artifacts. Evaluation runs in fp32
whatever the training precision.

Metrics that need samples run once per sample mode of the model (the VAE's decoder means and its
sampled pixels); values of a non-default mode are keyed ``KEY[mode]`` (``core.schema``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from genbench.bench.engine.data import Dataset
from genbench.bench.engine.device import exact_fp32
from genbench.bench.engine.timing import hardware_name
from genbench.core.errors import UserError
from genbench.core.files import save_image_grid, save_torch
from genbench.core.schema import SCHEMA_VERSION, Value, entry, variant_key
from genbench.metrics import METRICS, EvalContext, missing_capability
from genbench.metrics.base import EvalConfig, describe_subset
from genbench.metrics.fidelity import REFERENCE_SPLIT, network_ids
from genbench.models.base import GenerativeModel


class SampleCollapse(UserError):
    """Every sample is (nearly) the same image."""


def protocol_block(
    data: Dataset,
    config: EvalConfig,
    profile: str,
    device: torch.device,
    precision: str,
    time_budget_s: float | None = None,
    processes: int = 1,
    compute_budget: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run-level protocol of metrics.json: what every number of the run depends on besides the
    model and the seed. Runs with equal blocks were measured identically. A time or compute budget
    (runs cut at equal wall-clock or equal FLOPs are another comparison than full schedules), the
    --set overrides (another model, schedule or evaluation) and a data-parallel run's process count
    (its cost numbers) appear only where they are set, so other runs group as before."""
    n_test = len(data.test)
    n_reference = min(config.n_samples, n_test)
    return {
        "profile": profile,
        "dataset": data.name,
        "levels": data.levels,
        "image_shape": list(data.image_shape),
        **data.protocol(),  # how the data was made beyond name and levels (binarization and its seeds)
        "device": device.type,
        "hardware": hardware_name(device),  # cost numbers compare only on the same processor
        "precision": precision,
        **({"time_budget_s": time_budget_s} if time_budget_s is not None else {}),
        **({"compute_budget": compute_budget} if compute_budget is not None else {}),
        **({"processes": processes} if processes > 1 else {}),
        **({"overrides": overrides} if overrides else {}),
        "test_images": min(config.n_test or n_test, n_test),
        "test_subset": describe_subset(n_test, config.n_test, config.subset_seed),
        "iwae_k": config.iwae_k,
        "iwae_images": min(config.iwae_images or config.n_test or n_test, n_test),
        "n_samples": config.n_samples,
        "reference": f"{REFERENCE_SPLIT}, {describe_subset(n_test, n_reference, config.subset_seed)}",
        "feature_networks": network_ids(config),
    }


@exact_fp32()  # no TF32 on CUDA: evaluation is fp32 whatever the training precision
def evaluate(
    model: GenerativeModel,
    data: Dataset,
    config: EvalConfig,
    device: torch.device,
    seed: int,
    train_summary: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
    only: tuple[str, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """{metrics.json key: entry} for every output of every registered metric (or of the metrics named
    in ``only``), per sample mode; ``progress``: a bar (or a log line) for each step that goes over
    images."""
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
        progress=progress,
    )
    selected = [m for m in METRICS.values() if only is None or m.name in only]
    if any("samples" in m.needs for m in selected):
        check_not_collapsed(model, ctx.samples(), data.test)
    modes = model.sample_modes()
    default_mode = next(iter(modes))
    sample_batch = config.sample_batch_size(device)
    entries: dict[str, dict[str, Any]] = {}
    for metric in selected:
        reason = missing_capability(model, metric.needs)
        for mode in modes if "samples" in metric.needs else (default_mode,):
            # Each metric starts from the same seed, so its noise (dequantization, posterior samples)
            # does not depend on which metrics ran before it or on what a cache saved them from computing.
            torch.manual_seed(seed)
            ctx.mode = None if mode == default_mode else mode
            if reason:
                values = {o.key: Value(None, na=reason) for o in metric.outputs}
            else:
                values = metric.compute(ctx)
            variant = modes[mode] if "samples" in metric.needs and modes[mode] else None
            for output in metric.outputs:
                if output.key not in values:
                    raise RuntimeError(f"metric {metric.name!r} did not return {output.key!r}")
                value = values[output.key]
                if variant:
                    value = dataclasses.replace(value, protocol={**value.protocol, "sample_mode": variant})
                if "samples" in metric.needs and value.value is not None:  # a seed's samples depend on it
                    batch = {"sample_batch": sample_batch}
                    value = dataclasses.replace(value, protocol={**value.protocol, **batch})
                entries[variant_key(output.key, ctx.mode)] = entry(output, value, variant=variant)
    ctx.mode = None
    if run_dir is not None:
        write_sample_artifacts(model, ctx, run_dir)
    return entries


def metrics_document(
    run_id: str,
    model: GenerativeModel,
    seed: int,
    protocol: dict[str, Any],
    entries: dict[str, Any],
    ladder: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole of metrics.json (schema in ``genbench.core.schema``); "ladder" only for a compute
    ladder's run (``bench.engine.ladder``)."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "model": model.name,
        "seed": seed,
        "protocol": protocol,
        "model_protocol": {
            "sample_modes": model.sample_modes(),
            "likelihood": model.likelihood,
            "invertible": model.invertible,
            "likelihood_estimator": model.likelihood_estimator() if model.likelihood else None,
        },
        "metrics": entries,
        **({"ladder": ladder} if ladder else {}),
    }


# Samples' pixel spread below 0.5% of the test set's, across samples (one image, repeated) or within
# each image (flat images, as a saturated or dead generator draws). Measured on the smoke GAN (seed 0,
# 256 samples): across/within 0.8%/0.65% untrained, 0.6%/0.5% after 3 steps, 0.3%/0.3% after 10 (its
# output still one grey), 2.5%/2.1% after its 30; the untrained smoke VAE 0.6%/0.6%; the flow,
# PixelCNN and diffusion model over 100% from the start.
COLLAPSE_SPREAD = 0.005


def check_not_collapsed(model: GenerativeModel, samples: torch.Tensor, reference: torch.Tensor) -> None:
    """Refuse to score a model whose samples are (nearly) all the same image (a collapsed GAN) or
    (nearly) flat images: FID and IS of such a set are numbers, but not a measurement of a
    generative model."""
    if len(samples) < 2:
        return
    reference = reference[: len(samples)].float().cpu()
    samples = samples.float().cpu()
    # per-pixel std across samples, averaged over pixels
    across = float(samples.std(0).mean() / reference.std(0).mean())
    # per-image std over its pixels, averaged over images
    within = float(samples.flatten(1).std(1).mean() / reference.flatten(1).std(1).mean())
    if across < COLLAPSE_SPREAD:
        raise SampleCollapse(
            f"{model.name}: its {len(samples)} samples have collapsed to (nearly) one image (pixel spread "
            f"{across:.2%} of the test set's); no metrics reported. Try another seed or a lower --lr"
        )
    if within < COLLAPSE_SPREAD:
        raise SampleCollapse(
            f"{model.name}: its {len(samples)} samples are (nearly) flat images (pixel spread within an "
            f"image {within:.2%} of the test set's); no metrics reported. Try another seed or a lower --lr"
        )


def write_sample_artifacts(model: GenerativeModel, ctx: EvalContext, run_dir: Path) -> None:
    grid = ctx.samples()[:64]  # (<=64, C, H, W) uint8, the first of the evaluated samples
    save_image_grid(run_dir / "samples.png", grid, levels=model.levels)
    save_torch(run_dir / "samples.pt", grid.clone())
    if model.can_interpolate:
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1)
        with torch.inference_mode():
            strips = model.interpolate(8, 10, generator=generator).cpu()  # (8, 10, C, H, W)
        save_image_grid(
            run_dir / "interpolation.png", strips.flatten(0, 1), nrow=strips.shape[1], levels=model.levels
        )
