"""DDPM: a normalized decoder, a prior term that vanishes, an unbiased estimator of the exact sum, a
bound that stays below the true log-likelihood, and reproducible samplers."""

from __future__ import annotations

import math

import pytest
import torch

from genbench import models
from genbench.models.diffusion import Diffusion, DiffusionConfig
from genbench.models.gaussians import discretized_gaussian_log_prob


def tiny(**overrides) -> Diffusion:
    """A small model on 4x4 images whose every parameter is random (the zero-initialized output
    layers too), so that its predictions are not trivially the grid base."""
    fields = dict(
        image_shape=(1, 4, 4), timesteps=20, channels=8, channel_mults=(1, 2), res_blocks=1,
        attention_levels=(1,), groups=4, sample_steps=5,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**{**fields, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def images(n: int, shape=(1, 4, 4), levels: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, *shape), generator=g).to(torch.uint8)


# --- the decoder --------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [256, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decoder_bins_sum_to_one(levels, dtype):
    half = 1.0 / (levels - 1)
    means = torch.tensor([-40.0, -3.0, -1.0, -1.0 + half, -0.3, 0.0, 0.1234, 1.0 - half, 1.0, 2.5, 40.0])
    log_std = torch.tensor([-14.0, -9.0, -6.0, -4.0, -2.0, 0.0, 1.0, 3.0])
    grid = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64)  # every pixel value
    x0, mean, ls = torch.meshgrid(grid, means.double(), log_std.double(), indexing="ij")  # (L, M, S)
    log_p = discretized_gaussian_log_prob(x0.to(dtype), mean.to(dtype), ls.to(dtype), levels)
    assert torch.isfinite(log_p).all()
    total = log_p.double().exp().sum(0)  # (M, S)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(total, torch.ones_like(total), atol=tol, rtol=0)


def test_decoder_matches_plain_cdf_differences_in_float64():
    levels, half = 256, 1.0 / 255
    x0 = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64)[:, None]
    mean = torch.tensor([-0.5, 0.0, 0.77], dtype=torch.float64)
    log_std = torch.log(torch.tensor([0.003, 0.05, 0.6], dtype=torch.float64))
    hi = torch.where(x0 > 1 - half, torch.ones(()), torch.special.ndtr((x0 + half - mean) / log_std.exp()))
    lo = torch.where(x0 < -1 + half, torch.zeros(()), torch.special.ndtr((x0 - half - mean) / log_std.exp()))
    mass = hi - lo  # (L, 3)
    ours = discretized_gaussian_log_prob(x0.expand(-1, 3), mean, log_std, levels).exp()
    big = mass > 1e-6  # where the plain difference has not lost its digits to cancellation
    torch.testing.assert_close(ours[big], mass[big], rtol=1e-8, atol=0)
    # a narrow Gaussian far from a bin: a plain difference is 0 - 0, the log mass is still finite
    far = discretized_gaussian_log_prob(torch.tensor(0.0), torch.tensor(0.5), torch.tensor(-8.0), levels)
    assert torch.isfinite(far) and far < -1e6


# --- the prior term -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_prior_term_is_near_zero_and_matches_its_closed_form(profile):
    config, _ = Diffusion.profiles[profile]()
    model = Diffusion(config)
    x = torch.stack(
        [torch.zeros(1, 28, 28), torch.full((1, 28, 28), 255.0), images(1, (1, 28, 28))[0].float()]
    )
    x0 = model._scale(x)  # (3, 1, 28, 28)
    kl = model.prior_kl(x0)
    abar_T = model.abar[-1]
    q = torch.distributions.Normal(abar_T.sqrt() * x0.double(), (1 - abar_T).sqrt())
    reference = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(kl, reference, rtol=1e-6, atol=1e-12)
    assert kl.max() < 0.01  # nats per image: a negligible part of the bound


# --- the bound ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_kl_terms_are_non_negative_and_the_exact_sum_is_finite(prediction):
    model = tiny(prediction=prediction, bound_t_samples=0)
    x0 = model._scale(images(4))
    with torch.no_grad():
        for t in range(model.config.timesteps):
            terms = model.bound_terms(x0, torch.full((4,), t))
            assert torch.isfinite(terms).all() and (terms >= -1e-9).all(), f"L_{t} < 0"
        lp = model.log_prob(images(4))
    assert lp.shape == (4,) and torch.isfinite(lp).all() and (lp < 0).all()


def test_stratified_draws_are_unbiased_for_any_terms():
    model = tiny(proposal="snr")
    f = torch.rand(model.config.timesteps, dtype=torch.float64) ** 4  # arbitrary non-negative terms
    f[0] = 0.0  # index 0 is the decoder, never drawn
    torch.manual_seed(1)
    t, w = model.draw_timesteps(200_000, 3)
    assert t.min() >= 1 and t.max() <= model.config.timesteps - 1
    estimates = (w * f[t]).view(3, -1).sum(0)  # (B,) one estimate of sum(f) per "image"
    stderr = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean() - f.sum()) < 4 * stderr + 1e-12


@pytest.mark.parametrize("proposal", ["uniform", "snr"])
def test_sampled_estimator_agrees_with_the_exact_sum(proposal):
    model = tiny(proposal=proposal)
    x = images(8).repeat(150, 1, 1, 1)  # (1200, 1, 4, 4): each image drawn 150 times
    torch.manual_seed(2)
    with torch.no_grad():
        exact = model.negative_bound(x, 0)["nelbo"].view(150, 8)
        sampled = model.negative_bound(x, 2)["nelbo"].view(150, 8)
    diff = sampled.mean(0) - exact.mean(0)  # (8,)
    stderr = (sampled.var(0) / 150 + exact.var(0) / 150).sqrt()
    assert (diff.abs() < 4 * stderr).all(), (diff, stderr)


def _quadrature_log_prob(model: Diffusion, values: torch.Tensor) -> torch.Tensor:
    """log p(x0) of a one-pixel, T = 2 model by quadrature over x_2 and x_1: the marginal of the
    reverse process itself (prior, p(x_1 | x_2), decoder), not of the bound. (L,) float64."""
    x2 = torch.linspace(-9, 9, 1801, dtype=torch.float64)
    x1 = torch.linspace(-7, 7, 3501, dtype=torch.float64)
    with torch.no_grad():
        x0_hat2, _, logvar2 = model._predict(
            x2.float().view(-1, 1, 1, 1), torch.ones(len(x2), dtype=torch.long)
        )
        x0_hat1, _, logvar1 = model._predict(
            x1.float().view(-1, 1, 1, 1), torch.zeros(len(x1), dtype=torch.long)
        )
    mean2 = model.coef_x0[1] * x0_hat2.double().flatten() + model.coef_xt[1] * x2  # (N2,)
    var2 = logvar2.double().exp().flatten().expand_as(mean2)
    mean1 = model.coef_x0[0] * x0_hat1.double().flatten() + model.coef_xt[0] * x1  # (N1,)
    log_std1 = 0.5 * logvar1.double().flatten().expand_as(mean1)
    # p(x_1) = int N(x_2) N(x_1; mean2(x_2), var2(x_2)) dx_2, on the x_1 grid: (N1,)
    dens = torch.exp(-0.5 * (x1[:, None] - mean2) ** 2 / var2) / torch.sqrt(2 * math.pi * var2)  # (N1, N2)
    p_x1 = (dens * torch.exp(-0.5 * x2**2) / math.sqrt(2 * math.pi)).sum(1) * (x2[1] - x2[0])
    decoder = discretized_gaussian_log_prob(values[:, None], mean1, log_std1, model.levels).exp()  # (L, N1)
    return torch.log((decoder * p_x1).sum(1) * (x1[1] - x1[0]))


@pytest.mark.parametrize(
    "fields",
    [dict(prediction="eps", schedule="cosine"),
     dict(prediction="v", schedule="loglinear", logsnr_range=(4.0, -6.0)),
     dict(prediction="v", variance="learned"), dict(prediction="eps", variance="beta", grid=False)],
)  # fmt: skip
def test_bound_is_below_the_true_log_likelihood(fields):
    levels = 4
    model = tiny(
        image_shape=(1, 1, 1),
        levels=levels,
        timesteps=2,
        sample_steps=2,
        channel_mults=(1,),
        attention_levels=(),
        **fields,
    )
    values = torch.linspace(-1, 1, levels, dtype=torch.float64)
    log_p = _quadrature_log_prob(model, values)  # (L,)
    assert abs(log_p.exp().sum().item() - 1) < 1e-4  # the reverse process is a distribution over pixels
    n = 20_000
    x = torch.arange(levels).repeat_interleave(n).view(-1, 1, 1, 1).to(torch.uint8)
    torch.manual_seed(3)
    with torch.no_grad():
        bound = -model.negative_bound(x, 0)["nelbo"].view(levels, n)  # one draw of x_1, x_2 each
    stderr = bound.std(1) / n**0.5
    assert (bound.mean(1) <= log_p + 4 * stderr).all(), (bound.mean(1), log_p)


# --- training and validation objectives ---------------------------------------------------------


@pytest.mark.parametrize("variance", ["posterior", "learned"])
def test_training_loss_is_the_simple_objective_and_validation_loss_the_bound(variance):
    model = tiny(variance=variance, val_t_samples=1)
    x = images(6)
    torch.manual_seed(4)
    train = model.training_loss(x, step=0)
    assert train["loss"].requires_grad and torch.isfinite(train["loss"])
    if variance == "posterior":
        assert train["loss"].item() == pytest.approx(train["mse"].item())
    with torch.no_grad():
        val = model.loss(x)
    # nats per image of the negative bound: at least the prior term, and made of its parts
    assert val["loss"].item() == pytest.approx(
        (val["prior"] + val["decoder"] + val["diffusion"]).item(), rel=1e-5
    )
    assert {"simple", "prior", "decoder", "diffusion"} <= set(val)


def test_learned_variance_bound_does_not_train_the_mean():
    """L_hybrid = L_simple + lambda L_vlb: the bound's gradient reaches the variance channel only."""

    def output_grad(vlb_weight: float) -> torch.Tensor:
        model = tiny(variance="learned", vlb_weight=vlb_weight).train()
        out = {}
        handle = model.net.register_forward_hook(lambda m, i, o: out.setdefault("o", o))
        torch.manual_seed(5)
        loss = model.training_loss(images(4), 0)["loss"]
        handle.remove()
        return torch.autograd.grad(loss, out["o"])[0]  # (B, 1 + K + 1, H, W): eps, grid logits, variance

    hybrid, simple = output_grad(0.01), output_grad(0.0)
    torch.testing.assert_close(hybrid[:, :-1], simple[:, :-1], rtol=0, atol=0)
    assert simple[:, -1:].abs().max() == 0 and hybrid[:, -1:].abs().max() > 0


def test_grid_posterior_is_the_bayes_mean_over_the_levels_and_follows_a_learned_prior():
    """With zero prior logits the grid base is E[x0 | x_t] under a uniform prior on all 256 levels
    (brute force in float64; at these noise levels, up to 1.6 grid steps, the window of 8 steps holds
    all the mass); a strong learned prior on level 0 puts every background pixel exactly at -1."""
    model = tiny(timesteps=1000, level_prior_scale=1.0)
    with torch.no_grad():
        model.level_logits.zero_()
    values = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1  # every level in [-1, 1]
    torch.manual_seed(3)
    for t in (0, 60, 120, 180):
        tt = torch.full((8,), t)
        a, s = model._at("abar", tt).sqrt(), (1 - model._at("abar", tt)).sqrt()
        x_t = a * model._scale(images(8)) + s * torch.randn(8, 1, 4, 4)
        g, _ = model.grid_split(x_t, tt)
        got = model.grid_posterior(x_t, tt, g, torch.zeros(8, 17, 4, 4))
        a64, s64 = a.double()[..., None], s.double()[..., None]
        log_w = -0.5 * ((x_t.double()[..., None] - a64 * values) / s64) ** 2  # (B, C, H, W, L)
        want = (torch.softmax(log_w, -1) * values).sum(-1)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)

    tt = torch.full((8,), 100)  # noise 0.55 grid steps: plain rounding misses 37% of pixels
    a, s = model._at("abar", tt).sqrt(), (1 - model._at("abar", tt)).sqrt()
    x_t = a * -1.0 + s * torch.randn(8, 1, 4, 4).abs()  # background pixels pushed up by noise
    g, _ = model.grid_split(x_t, tt)
    uniform = model.grid_posterior(x_t, tt, g, torch.zeros(8, 17, 4, 4))
    assert (uniform + 1).abs().max() > 1e-3
    with torch.no_grad():
        model.level_logits[0] = 40.0
    informed = model.grid_posterior(x_t, tt, g, torch.zeros(8, 17, 4, 4))
    torch.testing.assert_close(informed, torch.full_like(informed, -1.0), rtol=0, atol=1e-6)


# --- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ddim", "ancestral"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sampling_is_reproducible(mode, eta):
    model = tiny(ddim_eta=eta, samplers=("ddim", "ancestral"))
    a = model.sample(3, generator=torch.Generator().manual_seed(7), mode=mode)
    b = model.sample(3, generator=torch.Generator().manual_seed(7), mode=mode)
    c = model.sample(3, generator=torch.Generator().manual_seed(8), mode=mode)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 4, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_with_eta_one_at_every_step_is_ancestral_sampling(prediction):
    model = tiny(prediction=prediction, variance="posterior")
    z = model.prior_latents(5, torch.Generator().manual_seed(0))
    ddim = model.ddim(z, model.config.timesteps, 1.0, torch.Generator().manual_seed(1))
    ancestral = model.ancestral(z, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, ancestral, atol=1e-4, rtol=1e-4)


def test_sample_modes_state_the_steps():
    model = tiny(samplers=("ddim", "ancestral"), sample_steps=7)
    assert model.sample_modes() == {"ddim": "DDIM, 7 steps", "ancestral": "ancestral, 20 steps"}
    assert len(model.ddim_timesteps(7)) == 7 and model.ddim_timesteps(7)[0] == 19
    assert model.ddim_timesteps(7)[-1] == 0


def test_estimator_description_states_the_terms():
    exact = tiny(bound_t_samples=0)
    assert "all 20 terms per image, one draw of x_t each" in exact.likelihood_estimator()
    assert exact.likelihood_kind() == "estimate"  # each term is still an expectation over x_t
    sampled = tiny(bound_t_samples=3)
    text = sampled.likelihood_estimator()
    assert "3 random t per image of the other 19 terms" in text and "unbiased" in text
    assert sampled.likelihood_kind() == "estimate"


# --- shapes from the config ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,levels", [((3, 8, 8), 256), ((1, 4, 4), 2), ((2, 8, 4), 16)])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_any_image_shape_and_levels(shape, levels, prediction):
    model = tiny(image_shape=shape, levels=levels, prediction=prediction)
    s = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, *shape) and s.dtype == torch.uint8 and int(s.max()) < levels
    with torch.no_grad():
        lp = model.log_prob(images(3, shape, levels))
    assert lp.shape == (3,) and torch.isfinite(lp).all() and (lp <= 0).all()
    assert model.decode_latents(model.prior_latents(2)).shape == (2, *shape)


def test_registered_with_alias_and_profiles():
    assert models.get_model_class("ddpm") is Diffusion
    for profile in ("smoke", "quick", "full"):
        config, train = Diffusion.profiles[profile]()
        assert train.ema_decay is not None  # the loop evaluates with the EMA weights
