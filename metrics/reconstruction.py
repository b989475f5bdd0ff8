"""Reconstruction error on the test subset, on [0, 1] pixels (pixel / (levels - 1))."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, describe_subset, register_metric
from genbench.models.base import to_unit

MSE = Output("recon_mse", "Recon MSE", "MSE/pixel", False, "likelihood", 10)
BCE = Output("recon_bce", "Recon BCE", "nats/image", False, "likelihood", 11)


@register_metric("reconstruction", needs=("reconstruct",), outputs=(MSE, BCE))
def reconstruction(ctx: EvalContext) -> dict[str, Value]:
    images = ctx.test_images()
    levels = ctx.model.levels

    def errors(x):
        target = to_unit(x, levels)  # (B, C, H, W) in [0, 1]
        recon = ctx.model.reconstruct(x).float().clamp(1e-6, 1 - 1e-6)
        mse = (recon - target).pow(2).flatten(1).mean(1)  # (B,)
        bce = F.binary_cross_entropy(recon, target, reduction="none").flatten(1).sum(1)  # (B,)
        return torch.stack([mse, bce], 1)  # (B, 2)

    per_image = ctx.per_image(errors, images, what="reconstruction")  # (N, 2)
    protocol = {
        "split": "test",
        "n_images": len(images),
        "subset": describe_subset(len(ctx.data.test), len(images), ctx.config.subset_seed),
        "seed": ctx.seed,
        "device": str(ctx.device),
    }
    return {
        MSE.key: Value(float(per_image[:, 0].mean()), protocol),
        BCE.key: Value(float(per_image[:, 1].mean()), {**protocol, "target": f"pixel / {levels - 1}"}),
    }
