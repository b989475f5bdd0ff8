"""Likelihood on the shared 8-bit scale: nats per image and bits per dimension on the test set."""

from __future__ import annotations

from genbench.metrics.base import EvalContext, Output, Value, register_metric
from genbench.models.base import bits_per_dim

NLL = Output("nll_nats", "NLL", "nats/image", higher_is_better=False)
BPD = Output("bpd", "Bits/dim", "bits/dim", higher_is_better=False)
IWAE_NLL = Output("iwae_nats", "IWAE NLL", "nats/image", higher_is_better=False)
IWAE_BPD = Output("iwae_bpd", "IWAE bits/dim", "bits/dim", higher_is_better=False)


def _nll_values(nll, ctx: EvalContext, protocol: dict, nats: Output, bpd: Output) -> dict[str, Value]:
    dims = 1
    for d in ctx.model.image_shape:
        dims *= d
    mean = float(nll.mean())
    protocol = {
        "split": "test",
        "n_images": len(nll),
        "dims": dims,
        "dequantization": "uniform, one draw per image",
        "seed": ctx.seed,
        "device": str(ctx.device),
        "stderr_nats": float(nll.std() / len(nll) ** 0.5) if len(nll) > 1 else None,
        **protocol,
    }
    return {nats.key: Value(mean, protocol), bpd.key: Value(float(bits_per_dim(mean, dims)), protocol)}


@register_metric("likelihood", needs=("likelihood",), outputs=(NLL, BPD))
def likelihood(ctx: EvalContext) -> dict[str, Value]:
    """Exact NLL (PixelCNN, RealNVP) or the negative ELBO (VAE); ``protocol.kind`` says which."""
    nll = -ctx.per_image(ctx.model.log_prob, ctx.test_images())
    return _nll_values(nll, ctx, {"kind": ctx.model.likelihood}, NLL, BPD)


@register_metric("iwae", needs=("bound",), outputs=(IWAE_NLL, IWAE_BPD))
def iwae(ctx: EvalContext) -> dict[str, Value]:
    """Importance-weighted estimate (Burda et al. 2016) with k samples: tighter than the ELBO."""
    k = ctx.config.iwae_k
    images = ctx.test_images(ctx.config.iwae_images)
    nll = -ctx.per_image(lambda x: ctx.model.iwae_log_prob(x, k), images, batch_size=32)
    return _nll_values(nll, ctx, {"kind": "bound", "estimator": "iwae", "k": k}, IWAE_NLL, IWAE_BPD)
