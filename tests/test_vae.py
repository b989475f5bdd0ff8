import math

import pytest
import torch
import torch.nn.functional as F
from model_utils import optimizers_for

from genbench import models
from genbench.models.vae import VAEConfig, discretized_logistic_log_prob, discretized_logistic_mean


def test_discretized_logistic_is_normalized_over_levels():
    mean = torch.tensor([-30.0, 0.0, 3.7, 128.0, 254.6, 300.0, 77.0])
    log_scale = torch.tensor([0.0, -3.0, 1.0, 4.0, -1.0, 2.0, -7.0])
    levels = torch.arange(256, dtype=torch.float32).view(-1, 1)  # (256, 1)
    log_p = discretized_logistic_log_prob(levels.expand(-1, 7), mean, log_scale, 256)  # (256, 7)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(7), atol=1e-5, rtol=0)
    expected = (log_p.double().exp() * levels.double()).sum(0)  # (7,) sum over x of x P(x)
    mean_image = discretized_logistic_mean(mean, log_scale, 256)  # (7,)
    torch.testing.assert_close(mean_image.double(), expected, atol=2e-3, rtol=1e-5)


def _reference_log_prob(x, mean, log_scale, levels):
    """float64 log bin mass, written independently of the model's formula: log(CDF(u) - CDF(l))
    as a difference of log-sigmoids through log1mexp, on the side of the mean where the CDFs do not
    cancel (survival functions above it)."""
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_s = torch.exp(-log_scale)
    u, l = (x + 0.5 - mean) * inv_s, (x - 0.5 - mean) * inv_s
    below = x < mean
    hi = torch.where(below, F.logsigmoid(u), F.logsigmoid(-l))  # the larger of the two log-CDFs
    lo = torch.where(below, F.logsigmoid(l), F.logsigmoid(-u))
    a = hi - lo
    log1mexp = torch.where(a < math.log(2), torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))
    mid = hi + log1mexp
    return torch.where(x <= 0, F.logsigmoid(u), torch.where(x >= levels - 1, F.logsigmoid(-l), mid))


def _logistic_grid():
    """float32 (means, log-scales, pixels), (18, 49, 256) each: means non-integer, on bin edges and
    far outside 0..255, log-scales -7..5, all 256 pixel values."""
    means = [-1000, -300.3, -20, -0.7, 0, 0.3, 37.25, 99.5, 100.6, 127.5, 128, 200.9, 254.5, 255, 255.4]
    means = torch.tensor(means + [280, 600.1, 1500])
    return torch.meshgrid(means, torch.linspace(-7, 5, 49), torch.arange(256.0), indexing="ij")


def test_discretized_logistic_matches_a_float64_reference():
    mean, log_scale, x = _logistic_grid()  # the reference sees the same float32 values in float64
    ref = _reference_log_prob(x, mean, log_scale, 256)
    err = (discretized_logistic_log_prob(x, mean, log_scale, 256).double() - ref).abs()
    # Measured: at most 9.6e-6 nats where |log P| <= 100 (the old density x width fallback: 420
    # nats; 0.014 nats of float32 cancellation where it did not fall back), and 1.8e-7 relative
    # (1.5 float32 ulps) anywhere: -1.6e6 nats (mean 1500, scale e^-7) has no float32 to 1e-4.
    assert err[ref.abs() <= 100].max() < 1e-4
    assert (err / ref.abs().clamp_min(1.0)).max() < 4 * torch.finfo(torch.float32).eps
    # The audit's case: a narrow logistic (scale e^-5) centred 0.6 above pixel 100.
    audit = discretized_logistic_log_prob(torch.tensor(100), torch.tensor(100.6), torch.tensor(-5.0), 256)
    assert float(audit) == pytest.approx(-14.84109, abs=1e-4)
    # The reference against plain float64 sigmoid differences, wherever those neither underflow
    # nor cancel (taken on the far side of the mean).
    inv_s = torch.exp(-log_scale.double())
    u, l = (x.double() + 0.5 - mean.double()) * inv_s, (x.double() - 0.5 - mean.double()) * inv_s
    direct = torch.where(
        x >= mean, torch.sigmoid(-l) - torch.sigmoid(-u), torch.sigmoid(u) - torch.sigmoid(l)
    )
    direct = torch.where(x <= 0, torch.sigmoid(u), torch.where(x >= 255, torch.sigmoid(-l), direct))
    ok = direct > 1e-200
    torch.testing.assert_close(direct[ok].log(), ref[ok], atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "log_scale", [-30.0, -7.0, 0.0, 0.366, 0.367, 5.0, 9.2, 9.3, 20.0, 87.0, 100.0, 110.0]
)
def test_discretized_logistic_has_finite_gradients_at_extremes(log_scale):
    """All three branches of log(1 - exp(-1/s)) (switching at 1/s = ln 2 and 1e-4), a denormal 1/s
    (100) and an underflowed one (110), end bins and means far outside the range: no inf or NaN in
    values or gradients, including from torch.where branches not taken."""
    mean = torch.tensor([-1e4, -300.0, 0.0, 100.6, 255.0, 255.5, 1e4]).view(-1, 1).requires_grad_()
    ls = torch.full((7, 1), log_scale, requires_grad=True)
    log_p = discretized_logistic_log_prob(torch.arange(256.0).view(1, -1), mean, ls, 256)  # (7, 256)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(mean.grad).all(), mean.grad
    assert torch.isfinite(ls.grad).all(), ls.grad
    if log_scale >= 20:  # flat over a bin: log P = log(1/s) + log sigmoid'(0) = -log_scale - log 4
        assert float(log_p[3, 100].detach()) == pytest.approx(-log_scale - math.log(4), abs=1e-4)


def _small_vae(seed=0):
    torch.manual_seed(seed)
    return models.get_model_class("vae")(VAEConfig(latent_dim=4, channels=(4, 8), hidden=16))


def _tiny_vae(seed=0):
    """A 1-D latent VAE on 4x4 images, weights scaled up so that the decoder depends on z and the
    posterior sits away from the prior (mu ~ -0.8, log-variance ~ 0.65)."""
    torch.manual_seed(seed)
    # The one line that knows VAEConfig's fields (image_size=4 before image_shape).
    config = VAEConfig(image_shape=(1, 4, 4), latent_dim=1, channels=(2, 2), hidden=4)
    vae = models.get_model_class("vae")(config)
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(3.0)
    return vae.eval()


def _log_px_given_z(vae, z, x):
    """log P(x | z) per latent row of z (G, Z) for one image x (C, H, W): (G,)."""
    mean, log_scale = vae.decode(z)
    log_p = discretized_logistic_log_prob(x.expand(len(z), -1, -1, -1), mean, log_scale, vae.config.levels)
    return log_p.flatten(1).sum(1)


def _mean_and_se(draws):
    """Per-image mean and standard error of (N, B) draws, in float64."""
    draws = draws.double()
    return draws.mean(0), draws.std(0) / math.sqrt(len(draws))


def test_elbo_is_exact_for_a_tiny_case():
    """Quadrature over a 1-D latent: log P(x) upper-bounds the ELBO and IWAE tends to it; the ELBO
    itself, E_q[log P(x|z) + log p(z) - log q(z|x)], matches the Monte-Carlo ELBO of log_prob
    two-sided, and IWAE with k = 1 and k = 8 (within a few standard errors) sits between the two."""
    vae = _tiny_vae()
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    z = torch.linspace(-8, 8, 4001).view(-1, 1)  # quadrature grid on the prior
    t = torch.linspace(-12, 12, 4001, dtype=torch.float64)  # standardized grid on the posterior
    w = torch.exp(-0.5 * t**2)
    w = w / w.sum()  # q(z|x) dz on the grid
    with torch.no_grad():
        log_px = torch.stack([_log_px_given_z(vae, z, xi) for xi in x])  # (2, G)
        log_prior = -0.5 * (math.log(2 * math.pi) + z.view(-1) ** 2)
        exact = torch.logsumexp(log_px + log_prior, 1) + math.log(z[1, 0] - z[0, 0])
        mu, logvar = (v[:, 0].double() for v in vae.encode(x))  # (2,) each
        elbo_quad = []
        for xi, m, lv in zip(x, mu, logvar, strict=True):
            zq = m + torch.exp(0.5 * lv) * t  # (G,)
            log_w = (
                _log_px_given_z(vae, zq.float().view(-1, 1), xi).double()
                - 0.5 * zq**2  # log p(z) - log q(z|x), the 2 pi cancelling
                + 0.5 * (lv + t**2)
            )
            elbo_quad.append((w * log_w).sum())
        elbo_quad = torch.stack(elbo_quad)
        n = 20_000
        torch.manual_seed(1)
        elbo, elbo_se = _mean_and_se(vae.log_prob(x.repeat(n, 1, 1, 1)).view(n, 2))
        iwae_1, iwae_1_se = _mean_and_se(vae.iwae_log_prob(x.repeat(n, 1, 1, 1), 1).view(n, 2))
        iwae_8, iwae_8_se = _mean_and_se(vae.iwae_log_prob(x.repeat(2000, 1, 1, 1), 8).view(2000, 2))
        iwae = vae.iwae_log_prob(x, k=20000, chunk=2000)
    assert torch.all(elbo_quad <= exact.double())
    assert torch.all(elbo <= exact + 1e-6)
    # Two-sided, within 4 standard errors (~0.014 nats here); a KL off by latent_dim / 2 = 0.5 nats
    # (its -1 dropped) or an IWAE off by log k fails these.
    assert torch.all(4 * elbo_se < 0.05) and torch.all(4 * iwae_8_se < 0.05)
    torch.testing.assert_close(elbo, elbo_quad, atol=float(4 * elbo_se.max() + 1e-3), rtol=0)
    torch.testing.assert_close(iwae_1, elbo_quad, atol=float(4 * iwae_1_se.max() + 1e-3), rtol=0)
    assert torch.all(elbo_quad - 4 * iwae_8_se <= iwae_8), (iwae_8, elbo_quad)
    assert torch.all(iwae_8 <= exact + 4 * iwae_8_se), (iwae_8, exact)
    torch.testing.assert_close(iwae, exact, atol=0.05, rtol=0)


def test_kl_matches_a_monte_carlo_estimate():
    """The model's closed-form KL(q(z|x) || N(0, I)) (the "kl" term of loss()) against the mean of
    log q(z|x) - log p(z) over 200k draws z ~ q(z|x), for posteriors set through encode()."""
    vae = _small_vae().eval()  # latent_dim = 4
    posteriors = [
        ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),  # q = p: KL = 0
        ([1.5, -2.0, 0.3, 0.0], [-3.0, 1.0, 0.5, -0.2]),
        ([-0.7, 0.1, 2.5, -1.2], [2.0, -6.0, 0.0, 1.3]),
        ([0.0, 0.0, 0.0, 0.0], [-8.0, -8.0, 3.0, 3.0]),  # no mean, only the variance term
    ]
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    for mu, logvar in posteriors:
        mu, logvar = torch.tensor([mu]), torch.tensor([logvar])  # (1, 4) each
        vae.encode = lambda _x, mu=mu, logvar=logvar: (mu, logvar)  # the posterior, whatever x is
        with torch.no_grad():
            kl = float(vae.loss(x)["kl"])
        eps = torch.randn(200_000, 4, generator=g, dtype=torch.float64)
        z = mu.double() + torch.exp(0.5 * logvar.double()) * eps
        log_ratio = (0.5 * (z**2 - eps**2 - logvar.double())).sum(-1)  # log q(z|x) - log p(z)
        mc, se = float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(len(eps))
        assert 5 * se < 0.5  # at most 0.22 here; dropping the KL's -1 shifts it by latent_dim / 2 = 2 nats
        assert kl == pytest.approx(mc, abs=5 * se + 1e-4), (mu, logvar, kl, mc, se)


def test_elbo_below_iwae_and_iwae_grows_with_k():
    vae = _small_vae().eval()
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = torch.stack([vae.log_prob(x) for _ in range(8)]).mean()
        iwae_1 = torch.stack([vae.iwae_log_prob(x, 1) for _ in range(8)]).mean()
        iwae_8 = torch.stack([vae.iwae_log_prob(x, 8) for _ in range(8)]).mean()
        iwae_64 = torch.stack([vae.iwae_log_prob(x, 64) for _ in range(8)]).mean()
    assert abs(float(iwae_1 - elbo)) < 0.02 * abs(float(elbo))  # k = 1 is the ELBO in expectation
    assert elbo <= iwae_8 <= iwae_64


@pytest.mark.slow
def test_reconstruction_error_falls_with_training(mnist_dir):
    from genbench.bench.engine.data import batches, epoch_order, load_mnist

    data = load_mnist(mnist_dir)
    torch.manual_seed(0)
    vae, cfg = models.build("vae", "smoke")
    opt = optimizers_for(vae, config=cfg)
    x = data.test[:256]

    def mse():
        with torch.no_grad():
            return float((vae.reconstruct(x) - x.float() / 255).pow(2).mean())

    before = mse()
    for step, batch in enumerate(batches(data.train, 32, epoch_order(len(data.train), 0, 0), drop_last=True)):
        vae.train_step(batch, opt, step)
        if step == 200:
            break
    assert mse() < 0.6 * before
