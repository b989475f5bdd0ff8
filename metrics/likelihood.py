"""Likelihood: nats per image and bits per dimension on the test subset, on the data's discrete
protocol (``levels`` values per pixel). D comes from the model's image shape."""

from __future__ import annotations

import math

from torch import Tensor

from genbench.core.errors import UserError
from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, describe_subset, register_metric
from genbench.models.base import bits_per_dim

NLL = Output("nll_nats", "NLL", "nats/image", False, "likelihood", 20)
BPD = Output("bpd", "Bits/dim", "bits/dim", False, "likelihood", 21)
IWAE_NLL = Output("iwae_nats", "IWAE NLL", "nats/image", False, "likelihood", 30)
IWAE_BPD = Output("iwae_bpd", "IWAE bits/dim", "bits/dim", False, "likelihood", 31)


class ImpossibleLikelihood(UserError):
    """A likelihood no model of discrete pixels can have: the run ends failed, like a diverged loss."""


def check_possible(nll: Tensor, model, what: str) -> None:
    """Every per-image NLL finite, and their mean not below 0: the probability of discrete pixels is
    at most 1, so an exact NLL, a bound on it and (up to Monte Carlo noise far below a nat) an IWAE
    estimate of it are never negative."""
    bad = int((~nll.isfinite()).sum())
    if bad:
        raise ImpossibleLikelihood(
            f"{model.name}: {what} is not finite for {bad} of {len(nll)} test images; the model diverged "
            "or its log_prob is broken"
        )
    mean = float(nll.mean())
    if mean < 0:
        raise ImpossibleLikelihood(
            f"{model.name}: {what} is {mean:.4g} nats/image ({float(bits_per_dim(mean, model.dims)):.4g} "
            "bits/dim), below 0, impossible for discrete pixels (a probability is at most 1); log_prob "
            "must return the log-probability of the discrete pixels in nats"
        )


# A trained model this much worse than a uniform coder has failed to train. Not any excess: a bound
# or an estimate sits above the likelihood it bounds, and a few steps on data that is nearly noise
# stay near log2(levels) from either side (a smoke diffusion bound on random CIFAR-format files: 10.2
# bits/dim, PixelCNN 8.02 exact); a diverged run lands far beyond (diffusion at --lr 1: 43).
UNIFORM_FACTOR = 1.5


def check_trained(entries: dict, model) -> None:
    """After training: the model's likelihood (exact, or a bound on it) no worse than UNIFORM_FACTOR
    times a uniform coder's log2(levels) bits/dim (8 for 256 levels, 1 binarized), beyond three
    standard errors of its estimate. Worse means training failed (a diverged run ends "done" at 43
    bits/dim otherwise): the run ends failed, like a diverged loss."""
    found = entries.get(BPD.key) or {}
    if found.get("value") is None:
        return
    uniform = math.log2(model.levels)
    if found["value"] - 3 * (found.get("stderr") or 0.0) > UNIFORM_FACTOR * uniform * (1 + 1e-6):
        raise ImpossibleLikelihood(
            f"{model.name}: {found['label']} {found['value']:.4g} after training is worse than a uniform "
            f"coder's {uniform:g} bits/dim ({model.levels} levels) by over half again; training failed: "
            "try a lower --lr"
        )


def nll_values(
    nll: Tensor, ctx: EvalContext, nats: Output, bpd: Output, kind: str, estimator: str, k: int | None = None
) -> dict[str, Value]:
    check_possible(nll, ctx.model, nats.label)
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
    }
    # The standard error of the mean over images: for an estimate it holds the Monte-Carlo noise of
    # the draws (and that of the image sample, which every family of the protocol shares).
    stderr = float(nll.std() / len(nll) ** 0.5) if len(nll) > 1 else None
    common = {"kind": kind, "estimator": estimator, "k": k}
    return {
        nats.key: Value(mean, protocol, stderr=stderr, **common),
        bpd.key: Value(
            float(bits_per_dim(mean, dims)),
            protocol,
            stderr=None if stderr is None else float(bits_per_dim(stderr, dims)),
            **common,
        ),
    }


@register_metric("likelihood", needs=("likelihood",), outputs=(NLL, BPD))
def likelihood(ctx: EvalContext) -> dict[str, Value]:
    """The NLL (PixelCNN), or a Monte-Carlo estimate of a bound on it (VAE, flow, diffusion), with the
    kind and estimator the model states."""
    nll = -ctx.per_image(ctx.model.log_prob, ctx.test_images(), what="likelihood")
    return nll_values(nll, ctx, NLL, BPD, ctx.model.likelihood_kind(), ctx.model.likelihood_estimator())


@register_metric("iwae", needs=("importance_weighted",), outputs=(IWAE_NLL, IWAE_BPD))
def iwae(ctx: EvalContext) -> dict[str, Value]:
    """Importance-weighted estimate with k samples (Burda et al. 2016; for a flow, over k
    dequantization draws), on the first iwae_images of the same test subset as the likelihood:
    tighter than the one-draw bound, an upper bound on the NLL in expectation."""
    k = ctx.config.iwae_k
    images = ctx.test_images(ctx.config.iwae_images or ctx.config.n_test)
    nll = -ctx.per_image(lambda x: ctx.model.iwae_log_prob(x, k), images, batch_size=32, what=f"IWAE k={k}")
    return nll_values(nll, ctx, IWAE_NLL, IWAE_BPD, "estimate", ctx.model.iwae_estimator(k), k)
