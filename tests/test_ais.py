"""Annealed importance sampling and BDMC against closed forms: probabilistic PCA (x = Wz + b + σε,
log p(x) Gaussian), and a discretized version on a few pixels summed by brute force over a grid of
a 1-D z. Each test is small enough to run in seconds on one CPU thread."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.metrics.ais import (
    Budget,
    Path,
    _evaluate,
    ais_log_prob,
    hmc_transition,
    reverse_ais_log_prob,
    sigmoid_schedule,
    tune_step_sizes,
)
from genbench.models.base import standard_normal_log_prob
from genbench.models.gaussians import discretized_gaussian_log_prob

F64 = torch.float64


def ppca(images: int, dim_x: int = 6, dim_z: int = 2, sigma: float = 0.3, seed: int = 0):
    """A pPCA model, images drawn from it with their latents, the exact log p(x), and the AIS path."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(dim_x, dim_z, generator=g, dtype=F64), torch.randn(dim_x, generator=g, dtype=F64)
    z = torch.randn(images, dim_z, generator=g, dtype=F64)
    x = z @ w.T + b + sigma * torch.randn(images, dim_x, generator=g, dtype=F64)
    cov = w @ w.T + sigma**2 * torch.eye(dim_x, dtype=F64)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(x)

    def log_lik(latents):
        xs = x.repeat_interleave(len(latents) // images, dim=0)
        r = (xs - latents @ w.T - b) / sigma
        return (-0.5 * r.pow(2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)

    path = Path(images, lambda n: torch.randn(n, dim_z, dtype=F64), standard_normal_log_prob, log_lik)
    return path, z, exact


def bounds(path, z, budget):
    steps = tune_step_sizes(path, budget)
    lower, acceptance = ais_log_prob(path, budget, steps)
    return lower, reverse_ais_log_prob(path, z, budget, steps), acceptance


def stderr(v):
    return float(v.std() / len(v) ** 0.5)


def test_sigmoid_schedule_runs_from_prior_to_posterior():
    b = sigmoid_schedule(50)
    assert b[0] == 0 and b[-1] == 1 and len(b) == 51
    assert (b.diff() > 0).all()
    assert b.diff()[0] < b.diff()[25]  # dense near the ends
    assert torch.equal(sigmoid_schedule(1), torch.tensor([0.0, 1.0], dtype=F64))


def test_hmc_leaves_the_annealed_distribution_invariant():
    """p(z) p(x | z)^b with a Gaussian prior and likelihood is N(m, s^2) in closed form; chains started
    there stay there, even at a step size where leapfrog alone is far off (no MH: variance ~2x)."""
    torch.manual_seed(0)
    n, beta = 20_000, 0.5
    x = torch.full((n,), 1.5, dtype=F64)
    path = Path(n, None, standard_normal_log_prob, lambda z: -0.5 * ((x - z[:, 0]) / 0.5).pow(2))
    precision = 1 + beta / 0.25  # prior 1, likelihood b / 0.5^2
    mean, std = beta / 0.25 * 1.5 / precision, precision**-0.5
    state = _evaluate(path, (mean + std * torch.randn(n, 1, dtype=F64)))
    step = torch.full((n,), 1.4 * std, dtype=F64)
    for _ in range(10):
        state, prob = hmc_transition(path, state, beta, step, leapfrog=1)
    z = state.z[:, 0]
    assert abs(float(z.mean()) - mean) < 0.02
    assert abs(float(z.std()) / std - 1) < 0.03
    assert 0.2 < float(prob.mean()) < 0.95


def test_ais_converges_to_the_exact_ppca_likelihood():
    torch.manual_seed(0)
    path, _, exact = ppca(images=40)
    errors = []
    for steps in (3, 30, 300):
        budget = Budget(chains=8, steps=steps, leapfrog=5)
        lower, acceptance = ais_log_prob(path, budget, tune_step_sizes(path, budget))
        errors.append(float((lower - exact).mean()))
    assert errors[0] < errors[1] < errors[2]  # more intermediate distributions, tighter
    assert abs(errors[2]) < 0.15, errors  # log 8 = 2.1: a logsumexp without -log K is far outside
    assert 0.5 < acceptance < 0.8


def test_bdmc_brackets_the_exact_ppca_likelihood_and_closes_with_more_steps():
    torch.manual_seed(1)
    path, z, exact = ppca(images=60, sigma=0.2)
    gaps = []
    for steps in (10, 200):
        lower, upper, _ = bounds(path, z, Budget(chains=4, steps=steps, leapfrog=5))
        assert float((lower - exact).mean()) < 2 * stderr(lower - exact)
        assert float((upper - exact).mean()) > -2 * stderr(upper - exact)
        gaps.append(float((upper - lower).mean()))
    assert gaps[1] < gaps[0] / 4, gaps  # measured: 8.1 nats at 10 steps, 1.1 at 200


def test_ais_matches_brute_force_summation_on_a_discretized_decoder():
    """Three 8-level pixels with a discretized Gaussian decoder of a 1-D latent: log p(x) summed over
    a fine grid of z (checked against 200,000 prior draws to 0.01); AIS and both BDMC bounds land
    on it."""
    torch.manual_seed(2)
    levels, sigma, images = 8, 0.25, 40
    w, b = torch.tensor([0.6, -0.4, 0.3], dtype=F64), torch.tensor([0.1, 0.0, -0.2], dtype=F64)
    z_true = torch.randn(images, 1, dtype=F64)
    centres = torch.linspace(-1, 1, levels, dtype=F64)
    noisy = z_true * w + b + sigma * torch.randn(images, 3, dtype=F64)
    x = centres[((noisy + 1) / 2 * (levels - 1)).round().clamp(0, levels - 1).long()]  # (B, 3) bin centres

    def log_p_given(xs, latents):  # (N, 3), (N, 1) -> (N,)
        log_std = torch.full_like(xs, math.log(sigma))
        return discretized_gaussian_log_prob(xs, latents * w + b, log_std, levels).sum(-1)

    grid = torch.linspace(-12, 12, 48_001, dtype=F64)[:, None]  # (G, 1)
    joint = torch.stack([log_p_given(xi.expand(len(grid), 3), grid) for xi in x])  # (B, G)
    exact = torch.logsumexp(joint + standard_normal_log_prob(grid), dim=1) + math.log(grid[1, 0] - grid[0, 0])

    def log_lik(latents):
        return log_p_given(x.repeat_interleave(len(latents) // images, dim=0), latents)

    path = Path(images, lambda n: torch.randn(n, 1, dtype=F64), standard_normal_log_prob, log_lik)
    lower, upper, _ = bounds(path, z_true, Budget(chains=8, steps=200, leapfrog=3))
    # one estimate's noise is ~0.2 nats here (8 chains); their means over 40 images agree to ~0.03
    assert abs(float((lower - exact).mean())) < 0.1
    assert abs(float((upper - exact).mean())) < 0.1
    assert float((lower - exact).mean()) < 2 * stderr(lower - exact)
    assert float((upper - exact).mean()) > -2 * stderr(upper - exact)


@pytest.mark.parametrize("levels", [256, 2])
def test_gan_decoder_sample_draws_from_its_decoder_log_prob(levels):
    """The exact posterior sample of BDMC needs x ~ p(x | z) from the same distribution AIS scores:
    the frequencies of sampled levels match exp(decoder_log_prob) (one pixel's marginal)."""
    from genbench.models.base import build

    torch.manual_seed(0)
    model, _ = build("gan", "smoke", image_shape=(1, 8, 8), levels=levels)
    model.eval()
    noise = model.decoder_noise_grid()[-1] if model.decoder_noise_grid() else None
    z = model.prior_latents(1).expand(40_000, -1)
    draws = model.decoder_sample(z, noise)[:, 0, 0, 0].long()  # (n,) one pixel
    counts = torch.bincount(draws, minlength=levels).double() / len(draws)
    probs = []
    for level in range(levels):
        x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
        x[0, 0, 0, 0] = level
        base = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
        with torch.no_grad():  # the other pixels cancel in the ratio to a reference image
            probs.append(model.decoder_log_prob(x, z[:1], noise) - model.decoder_log_prob(base, z[:1], noise))
    probs = torch.cat(probs).exp()
    probs = probs / probs.sum()
    assert float((counts - probs).abs().max()) < 0.01
