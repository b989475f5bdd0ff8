"""RealNVP: exact invertibility, log-determinants against autograd Jacobians, normalization of the
density on a 2x2 image, the full likelihood accounting in closed form, sampling and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_utils import optimizers_for

from genbench.models import get_model_class
from genbench.models.base import bits_per_dim
from genbench.models.realnvp import Config, RealNVP, squeeze, unsqueeze


def tiny(image_size: int, n_scales: int, **overrides) -> Config:
    fields = dict(
        image_shape=(1, image_size, image_size), n_scales=n_scales, n_couplings=2, n_final_couplings=2
    )
    fields |= dict(hidden_channels=4, n_blocks=1)
    return Config(**(fields | overrides))


def randomized(config: Config, seed: int = 0, std: float = 0.3) -> RealNVP:
    """A float64 model whose couplings are far from the identity (every parameter drawn at random),
    so that the checks below see non-trivial scales, shifts and act norms."""
    torch.manual_seed(seed)
    model = RealNVP(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Fake uint8 digits: a bright blob on a dark background, plus noise."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(size, dtype=torch.float32)
    centre = torch.rand(n, 2, generator=g) * size * 0.5 + size * 0.25  # (n, 2)
    d2 = (i[None, :, None] - centre[:, 0, None, None]) ** 2 + (
        i[None, None, :] - centre[:, 1, None, None]
    ) ** 2
    blob = 255.0 * torch.exp(-d2 / (0.08 * size**2))  # (n, H, W)
    noisy = blob + 20.0 * torch.randn(n, size, size, generator=g)
    return noisy.clamp(0, 255).to(torch.uint8).unsqueeze(1)  # (n, 1, H, W)


def test_registered_with_capabilities():
    cls = get_model_class("realnvp")
    assert cls is get_model_class("flow") is RealNVP
    # a density of x + u: a Monte-Carlo estimate of the dequantization bound, never "exact"
    assert cls.likelihood == "estimate" and cls.importance_weighted and cls.can_reconstruct


def test_config_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        Config(image_shape=(1, 28, 28), n_scales=4)  # 28 / 8 is not an integer


def test_squeeze_is_a_permutation_with_checkerboard_halves():
    x = torch.arange(2 * 4 * 4, dtype=torch.float64).reshape(1, 2, 4, 4)
    s = squeeze(x)  # (1, 8, 2, 2)
    assert s.shape == (1, 8, 2, 2)
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s.flatten().sort().values, x.flatten())
    # The first half of the channels holds exactly the pixels with (i + j) even.
    i = torch.arange(4)
    even = ((i[:, None] + i[None, :]) % 2 == 0).expand(1, 2, 4, 4)
    assert torch.equal(s[:, :4].flatten().sort().values, x[even].sort().values)


@pytest.mark.parametrize("config", [tiny(8, 3), tiny(2, 1), tiny(4, 2)], ids=["8x8-3scales", "2x2", "4x4"])
def test_inverse_of_forward_is_identity(config):
    model = randomized(config)
    y = torch.rand(6, 1, config.image_shape[1], config.image_shape[2], dtype=torch.float64)
    z, _ = model(y)
    assert z.shape == (6, config.image_shape[1] ** 2)
    assert (model.inverse(z) - y).abs().max() < 1e-10
    # And the other way round for the coupling stack (a random model's logits may saturate the sigmoid).
    z = torch.randn(6, config.image_shape[1] ** 2, dtype=torch.float64)
    assert (model.flow(model.flow_inverse(z))[0] - z).abs().max() < 1e-8


@pytest.mark.parametrize("family", ["flow", "glow"])
def test_inverse_smoke_profile_28x28_after_actnorm_init(family):
    """RealNVP's smoke profile, and Glow's (which replaces only the stack of invertible layers)."""
    cls = get_model_class(family)
    config, _ = cls.profiles["smoke"]()
    torch.manual_seed(0)
    model = cls(config)
    model.train()
    model.loss(images(16, 28))  # data-dependent act norm init
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "net"):  # couplings start as the identity; make them not
                layer.net.out[1].weight.normal_(0.0, 0.05)
    model.eval()
    with torch.no_grad():
        y = (images(8, 28, seed=1).float() + torch.rand(8, 1, 28, 28)) / 256.0
        z, _ = model(y)
        assert (model.inverse(z) - y).abs().max() < 1e-4
        x = images(8, 28, seed=2)
        recon = model.reconstruct(x)
    assert recon.min() >= 0.0 and recon.max() <= 1.0
    assert (recon - (x.float() + 0.5) / 256.0).abs().max() < 1e-4
    assert torch.equal(torch.floor(recon * 256.0).to(torch.uint8), x)  # the same map sample() uses


def test_actnorm_data_dependent_init_and_checkpoint_round_trip():
    config = tiny(4, 2)
    torch.manual_seed(0)
    model = RealNVP(config).train()
    y = torch.rand(64, 1, 4, 4)
    v, _ = model.logit(y)
    first = model.scales[0].pre[0]
    out, _ = first(v)
    assert bool(first.initialized)
    assert out.mean().abs() < 1e-5 and (out.std() - 1.0).abs() < 1e-3
    # A loaded checkpoint keeps its init: the first training forward must not re-initialize.
    fresh = RealNVP(config)
    fresh.load_state_dict(model.state_dict())
    fresh.train()
    out2, _ = fresh.scales[0].pre[0](v + 5.0)
    assert torch.allclose(out2, out + 5.0 * first.log_scale.exp(), atol=1e-5)


@pytest.mark.parametrize("n_scales", [1, 2])
def test_log_det_matches_autograd_jacobian(n_scales):
    """log|det dz/dy| reported by forward (logit + act norms + couplings) equals slogdet of the full
    16x16 Jacobian, after a data-dependent act norm init."""
    config = tiny(4, n_scales)
    model = randomized(config, seed=1).train()
    model(torch.rand(32, 1, 4, 4, dtype=torch.float64))  # act norm init overrides the random loc/scale
    model.eval()
    for seed in range(3):
        y = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        _, logdet = model(y)
        jac = torch.autograd.functional.jacobian(lambda t: model(t.reshape(1, 1, 4, 4))[0][0], y.flatten())
        sign, expected = torch.linalg.slogdet(jac)  # (16, 16)
        assert sign != 0
        assert torch.allclose(logdet[0], expected, atol=1e-8)
        # The coupling stack alone (logit space -> latent).
        v, _ = model.logit(y)
        _, logdet_flow = model.flow(v)
        jac = torch.autograd.functional.jacobian(
            lambda t: model.flow(t.reshape(1, 1, 4, 4))[0][0], v.flatten()
        )
        assert torch.allclose(logdet_flow[0], torch.linalg.slogdet(jac)[1], atol=1e-8)


def gauss_legendre_grid(lo: float, hi: float, n: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes (n^dims, dims) and weights (n^dims,) of the product Gauss-Legendre rule on [lo, hi]^dims."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    nodes = torch.tensor(nodes) * (hi - lo) / 2 + (hi + lo) / 2
    weights = torch.tensor(weights) * (hi - lo) / 2
    return torch.cartesian_prod(*[nodes] * dims), torch.cartesian_prod(*[weights] * dims).prod(1)


def test_density_of_2x2_flow_integrates_to_one():
    """p_Y is a density on the logit transform's domain ((-a, 1 - a) / (1 - 2a))^4, so it integrates to
    1 there; over [0, 1)^4 it holds exactly the probability that a model sample lands in [0, 1)^4.
    Both integrals by quadrature: this tests the logit Jacobian, the log(1 - 2 alpha) term and every
    coupling log-det together (dropping log(1 - 2 alpha) alone would give 0.9^4 = 0.66)."""
    model = randomized(tiny(2, 1, n_final_couplings=3), seed=3, std=0.2).float()
    alpha = model.config.alpha
    lo, hi = -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)

    def integral(lo: float, hi: float) -> float:
        points, weights = gauss_legendre_grid(lo, hi, 16, 4)
        density = model.log_density(points.reshape(-1, 1, 2, 2).float()).double().exp()  # (16^4,)
        return (density * weights).sum().item()

    with torch.no_grad():
        total, in_box = integral(lo, hi), integral(0.0, 1.0)
        z = torch.randn(100_000, 4, generator=torch.Generator().manual_seed(0))
        y = model.inverse(z)  # (N, 1, 2, 2)
        fraction = ((y >= 0) & (y < 1)).flatten(1).all(1).double().mean().item()
    assert abs(total - 1.0) < 0.01
    assert in_box < 0.95  # this model leaks visible mass outside [0, 1)^4, so the second check bites
    assert abs(in_box - fraction) < 0.01


def test_dequantization_estimates_bound_the_exact_discrete_likelihood_and_tighten_with_k():
    """A 2x2 flow on 2 levels: P(x) = the integral of p_Y over x's cell [x/2, (x+1)/2)^4, by
    quadrature, for all 16 images. The one-draw estimate and the importance-weighted one with k = 8
    both lie below log P(x) in expectation, and k = 8 is closer (the bound tightens with k)."""
    model = randomized(tiny(2, 1, n_final_couplings=3, levels=2), seed=3, std=0.2).float()
    x = torch.cartesian_prod(*[torch.arange(2)] * 4).view(16, 1, 2, 2).to(torch.uint8)
    points, weights = gauss_legendre_grid(0.0, 0.5, 6, 4)  # the cell of x = 0, shifted per image
    with torch.no_grad():
        y = (points[None] + x.flatten(1)[:, None].double() / 2).reshape(-1, 1, 2, 2)  # (16 * 6^4, 1, 2, 2)
        density = model.log_density(y.float()).double().exp().view(16, -1)
        exact = (density * weights).sum(1).log()  # (16,) log P(x)
        reps = 100
        torch.manual_seed(0)
        one = model.log_prob(x.repeat(reps, 1, 1, 1)).double().view(reps, 16)
        iw = model.iwae_log_prob(x.repeat(reps, 1, 1, 1), 8).double().view(reps, 16)
    se_one, se_iw = one.std(0) / reps**0.5, iw.std(0) / reps**0.5
    assert (one.mean(0) < exact + 4 * se_one).all() and (iw.mean(0) < exact + 4 * se_iw).all()
    gap_one, gap_iw = exact - one.mean(0), exact - iw.mean(0)
    assert gap_one.mean() > 0.05  # this model's density varies across a cell: the one-draw bound is loose
    assert gap_iw.mean() < 0.5 * gap_one.mean()


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
def test_identity_flow_log_prob_in_closed_form(alpha):
    """With zero-initialized coupling outputs and act norms not yet initialized, the flow is a
    permutation of v = logit(p), so log_prob has a closed form: every term of the accounting."""
    config = tiny(8, 2, alpha=alpha)
    model = RealNVP(config).eval()
    x = images(5, 8)
    with torch.no_grad():
        torch.manual_seed(123)
        got = model.log_prob(x)
        torch.manual_seed(123)
        y = (x.double() + torch.rand(x.shape, dtype=torch.float32).double()) / 256.0  # same u as dequantize
        a, dims = config.alpha, 64
        p = a + (1 - 2 * a) * y
        v = torch.log(p) - torch.log(1 - p)
        expected = (
            (-0.5 * v**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
            + (math.log(1 - 2 * a) - torch.log(p) - torch.log(1 - p)).flatten(1).sum(1)
            - dims * math.log(256.0)
        )
        z, logdet = model(y.float())
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-3)
    assert torch.allclose(z.sort(1).values.double(), v.flatten(1).sort(1).values, atol=1e-4)
    terms = model.loss(x)
    assert torch.allclose(terms["bpd"], bits_per_dim(terms["loss"], dims))


def test_log_prob_is_float32_under_bf16_autocast():
    config, _ = RealNVP.profiles["smoke"]()
    model = RealNVP(config).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp = model.log_prob(images(4, 28))
    assert lp.dtype == torch.float32 and lp.shape == (4,) and torch.isfinite(lp).all()


def test_sample_shapes_dtype_and_seeds():
    config = tiny(8, 3)
    model = randomized(config).float()
    a = model.sample(5, torch.Generator().manual_seed(0))
    b = model.sample(5, torch.Generator().manual_seed(0))
    c = model.sample(5, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    frames = model.interpolate(3, 4, torch.Generator().manual_seed(0))
    assert frames.dtype == torch.uint8 and frames.shape == (3, 4, 1, 8, 8)


def test_three_channel_shape_is_the_configs():
    """image_shape is the one source of D: three channels reach every method and the bits/dim."""
    model = randomized(Config(image_shape=(3, 8, 8), n_scales=2, n_couplings=1, n_final_couplings=1,
                              hidden_channels=4, n_blocks=1)).float()  # fmt: skip
    assert model.image_shape == (3, 8, 8) and model.dims == 192
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 8, 8)
    assert model.reconstruct(x).shape == (2, 3, 8, 8)
    terms = model.loss(x)
    assert torch.allclose(terms["bpd"], terms["loss"] / (192 * math.log(2)))


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = RealNVP(tiny(8, 2, hidden_channels=8))
    opt = optimizers_for(model, lr=1e-2)
    x = images(32, 8)
    losses = [model.train_step(x, opt, step)["loss"].item() for step in range(25)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3 * 64  # at least 0.3 nats per pixel
