"""Likelihood: nats per image and bits per dimension on the test subset, on the data's discrete
protocol (``levels`` values per pixel). D comes from the model's image shape."""

from __future__ import annotations

from torch import Tensor

from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, describe_subset, register_metric
from genbench.models.base import bits_per_dim

NLL = Output("nll_nats", "NLL", "nats/image", False, "likelihood", 20)
BPD = Output("bpd", "Bits/dim", "bits/dim", False, "likelihood", 21)
IWAE_NLL = Output("iwae_nats", "IWAE NLL", "nats/image", False, "likelihood", 30)
IWAE_BPD = Output("iwae_bpd", "IWAE bits/dim", "bits/dim", False, "likelihood", 31)


def nll_values(
    nll: Tensor, ctx: EvalContext, nats: Output, bpd: Output, kind: str, estimator: str, k: int | None = None
) -> dict[str, Value]:
    dims = ctx.model.dims
    mean = float(nll.mean())
    protocol = {
        "split": "test",
        "n_images": len(nll),
        "subset": describe_subset(len(ctx.data.test), len(nll), ctx.config.subset_seed),
        "dims": dims,
        "levels": ctx.model.levels,
        "seed": ctx.seed,
        "device": str(ctx.device),
        "stderr_nats": float(nll.std() / len(nll) ** 0.5) if len(nll) > 1 else None,
    }
    common = {"kind": kind, "estimator": estimator, "k": k}
    return {
        nats.key: Value(mean, protocol, **common),
        bpd.key: Value(float(bits_per_dim(mean, dims)), protocol, **common),
    }


@register_metric("likelihood", needs=("likelihood",), outputs=(NLL, BPD))
def likelihood(ctx: EvalContext) -> dict[str, Value]:
    """Exact NLL (PixelCNN, RealNVP) or a negative variational bound (VAE, diffusion)."""
    nll = -ctx.per_image(ctx.model.log_prob, ctx.test_images(), what="likelihood")
    return nll_values(nll, ctx, NLL, BPD, ctx.model.likelihood_kind(), ctx.model.likelihood_estimator())


@register_metric("iwae", needs=("importance_weighted",), outputs=(IWAE_NLL, IWAE_BPD))
def iwae(ctx: EvalContext) -> dict[str, Value]:
    """Importance-weighted estimate (Burda et al. 2016) with k samples, on the first iwae_images of
    the same test subset as the likelihood: tighter than the ELBO, an upper bound on the NLL in
    expectation."""
    k = ctx.config.iwae_k
    images = ctx.test_images(ctx.config.iwae_images or ctx.config.n_test)
    nll = -ctx.per_image(lambda x: ctx.model.iwae_log_prob(x, k), images, batch_size=32, what=f"IWAE k={k}")
    return nll_values(nll, ctx, IWAE_NLL, IWAE_BPD, "estimate", f"IWAE, k={k}", k)
