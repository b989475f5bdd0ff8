"""The Gaussian pieces of the diffusion bound against torch.distributions in float64, and a bound
that must be tight: a reverse process set to the true posterior of Gaussian data, whose bound equals
the true NLL. A wrong KL (its factor, its mean term, its arguments) fails here, whatever the scale
of the test models' other terms."""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence

from genbench.models.diffusion import Diffusion, DiffusionConfig
from genbench.models.gaussians import discretized_gaussian_log_prob, normal_kl


def test_normal_kl_is_torch_distributions_kl_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    mean1, mean2 = (3 * torch.randn(2000, generator=g, dtype=torch.float64) for _ in range(2))
    logvar1, logvar2 = (4 * torch.randn(2000, generator=g, dtype=torch.float64) for _ in range(2))
    ours = normal_kl(mean1, logvar1, mean2, logvar2)
    reference = kl_divergence(Normal(mean1, (0.5 * logvar1).exp()), Normal(mean2, (0.5 * logvar2).exp()))
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    # equal variances: only the mean term, (m1 - m2)^2 / (2 var)
    torch.testing.assert_close(
        normal_kl(mean1, logvar2, mean2, logvar2),
        (mean1 - mean2) ** 2 / (2 * logvar2.exp()),
        rtol=1e-10,
        atol=0,
    )


def test_discretized_decoder_is_torch_distributions_cdf_differences_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    for levels in (2, 5, 256):
        x0 = torch.randint(0, levels, (3000,), generator=g).double() * (2 / (levels - 1)) - 1
        mean = 1.5 * torch.randn(3000, generator=g, dtype=torch.float64)
        log_std = torch.empty(3000, dtype=torch.float64).uniform_(-5, 1, generator=g)
        normal, half = Normal(mean, log_std.exp()), 1 / (levels - 1)
        upper = torch.where(x0 > 1 - half, torch.ones(()), normal.cdf(x0 + half))
        lower = torch.where(x0 < -1 + half, torch.zeros(()), normal.cdf(x0 - half))
        mass = upper - lower
        ours = discretized_gaussian_log_prob(x0, mean, log_std, levels)
        big = mass > 1e-6  # where the plain difference keeps its digits
        assert big.sum() > 1000
        torch.testing.assert_close(ours[big], mass[big].log(), rtol=0, atol=1e-8)


class TrueReverse(Diffusion):
    """The reverse process of data x0 ~ N(0, 1): a variance-preserving forward process keeps every
    marginal N(0, 1), so the true reverse step is q(x_{t-1} | x_t) = N(sqrt(1 - beta_t) x_t, beta_t)
    in closed form, and p(x_T) = N(0, I) is q(x_T). The network is bypassed: x0_hat is set so that
    the model's mean coef_x0 x0_hat + coef_xt x_t is that mean, with the model's variance beta_t."""

    def _predict(self, x_t, t, out=None):
        a, s = self._at("abar", t, torch.float64).sqrt(), (1 - self._at("abar", t, torch.float64)).sqrt()
        x_t = x_t.double()
        mean = (1 - self._at("betas", t, torch.float64)).sqrt() * x_t
        x0_hat = (mean - self._at("coef_xt", t, torch.float64) * x_t) / self._at("coef_x0", t, torch.float64)
        return x0_hat, (x_t - a * x0_hat) / s, self._at("beta_logvar", t, torch.float64)


def test_bound_of_the_true_reverse_process_is_the_true_nll():
    """Such a model is the exact time reversal of N(0, 1) data, so its posterior over x_1..x_T is the
    forward process's and the bound is tight: -log of the N(0, 1) mass of the pixel's bin (up to the
    bin's width against sqrt(beta_1), ~1e-4 nats here). Its KL terms are not zero (beta_t is not the
    posterior variance beta-tilde_t, and the means differ): ~2 of its ~5.8 nats."""
    levels, T = 256, 8
    config = DiffusionConfig(
        image_shape=(1, 1, 1), levels=levels, timesteps=T, schedule="loglinear", logsnr_range=(4.0, -4.0),
        variance="beta", grid=False, sample_steps=T, channels=4, channel_mults=(1,), attention_levels=(),
        groups=2,
    )  # fmt: skip
    model = TrueReverse(config).eval()
    # Interior bins: the end bins take the tails, whose posterior is far from q(. | x0 = +-1).
    pixels = torch.tensor([40, 90, 128, 200])
    x0 = pixels.double() * (2 / (levels - 1)) - 1
    half = 1 / (levels - 1)
    true_nll = -(torch.special.ndtr(x0 + half) - torch.special.ndtr(x0 - half)).log()  # (4,)
    n = 20_000
    x = pixels.repeat(n).view(-1, 1, 1, 1).to(torch.uint8)  # draw i of pixel j at i * 4 + j
    torch.manual_seed(0)
    with torch.no_grad():
        parts = model.negative_bound(x, 0)
    bound = parts["nelbo"].view(n, len(pixels))
    stderr = bound.std(0) / math.sqrt(n)
    assert (stderr < 0.015).all()
    assert ((bound.mean(0) - true_nll).abs() < 4 * stderr + 1e-3).all(), (bound.mean(0), true_nll, stderr)
    assert parts["diffusion"].mean() > 1.0  # the KL terms carry a real part of the bound
