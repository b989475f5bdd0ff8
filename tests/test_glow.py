"""Glow: the LU-decomposed 1x1 convolution's log-determinant against slogdet, the whole flow's
log-determinant (split priors included) against an autograd Jacobian, invertibility, normalization
on a 2x2 image, and the flow family's likelihood protocol shared with RealNVP."""

from __future__ import annotations

import pytest
import torch
from test_realnvp import gauss_legendre_grid

from genbench.models import build, get_model_class
from genbench.models.glow import Glow, GlowConfig, InvConv1x1
from genbench.models.realnvp import RealNVP


def randomized(size: int, n_levels: int, seed: int = 0, std: float = 0.3, **overrides) -> Glow:
    """A float64 Glow with every parameter drawn at random (couplings, 1x1 convs and split priors far
    from their identity initialization), its act norms initialized on data."""
    torch.manual_seed(seed)
    fields = dict(image_shape=(1, size, size), n_levels=n_levels, n_steps=2, hidden_channels=4)
    model = Glow(GlowConfig(**(fields | overrides))).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    model.train()
    model(torch.rand(32, 1, size, size, dtype=torch.float64))  # data-dependent act norm init
    return model.eval()


def test_registered_as_a_variant_of_the_flow_family():
    cls = get_model_class("glow")
    assert cls is Glow and issubclass(Glow, RealNVP) and Glow.name == "glow"
    assert get_model_class("flow") is RealNVP  # registering Glow left RealNVP's name alone
    # The likelihood protocol is RealNVP's, declared once.
    model, flow = build("glow", "smoke")[0], build("flow", "smoke")[0]
    assert model.likelihood == flow.likelihood and model.can_reconstruct and model.can_interpolate
    assert model.likelihood_estimator() == flow.likelihood_estimator()
    assert model.likelihood_kind() == flow.likelihood_kind()


def test_config_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        GlowConfig(image_shape=(1, 28, 28), n_levels=3)  # 28 / 8 is not an integer


@pytest.mark.parametrize("channels", [4, 8])
def test_invconv_log_det_is_exact_and_inverse_inverts(channels):
    torch.manual_seed(channels)
    conv = InvConv1x1(channels).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    w = conv.weight()
    sign, logabsdet = torch.linalg.slogdet(w)
    x = torch.randn(3, channels, 5, 5, dtype=torch.float64)
    y, logdet = conv(x)
    assert sign != 0
    assert torch.allclose(logdet, (25 * logabsdet).expand(3), atol=1e-10)  # log|det W| per pixel, 25 pixels
    assert torch.allclose(y, torch.einsum("ij,bjhw->bihw", w, x), atol=1e-12)
    assert (conv.inverse(y) - x).abs().max() < 1e-10
    # The permutation and triangular factors stay what the LU decomposition says.
    assert torch.equal(conv.p @ conv.p.T, torch.eye(channels, dtype=torch.float64))


@pytest.mark.parametrize("n_levels", [1, 2])
def test_log_det_matches_autograd_jacobian(n_levels):
    """log|det dz/dy| from forward (logit, act norms, 1x1 convs, couplings, split priors) equals slogdet
    of the full 16x16 Jacobian on a 1x4x4 image."""
    model = randomized(4, n_levels, seed=1)
    priors = [level.prior for level in model.scales if level.prior is not None]
    assert len(priors) == n_levels - 1 and all(prior.conv.weight.abs().sum() > 0 for prior in priors)
    for seed in range(3):
        y = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        _, logdet = model(y)
        jac = torch.autograd.functional.jacobian(lambda t: model(t.reshape(1, 1, 4, 4))[0][0], y.flatten())
        sign, expected = torch.linalg.slogdet(jac)  # (16, 16)
        assert sign != 0
        assert torch.allclose(logdet[0], expected, atol=1e-8)


@pytest.mark.parametrize("size, n_levels", [(4, 2), (2, 1), (8, 3)])
def test_inverse_of_forward_is_identity(size, n_levels):
    # Perturbed less than elsewhere: with 0.3 a random z can leave the inverse at 1e9 (ill-conditioned).
    model = randomized(size, n_levels, std=0.1)
    y = torch.rand(6, 1, size, size, dtype=torch.float64)
    z, _ = model(y)
    assert z.shape == (6, size * size)
    assert (model.inverse(z) - y).abs().max() < 1e-10
    z = torch.randn(6, size * size, dtype=torch.float64)
    assert (model.flow(model.flow_inverse(z))[0] - z).abs().max() < 1e-8


def test_density_of_2x2_glow_integrates_to_one():
    """The 2x2 flow's density, logit transform included, integrates to 1 over the logit transform's
    domain ((-a, 1 - a) / (1 - 2a))^4 (Gauss-Legendre quadrature): every log-det term at once."""
    model = randomized(2, 1, seed=3, std=0.1, alpha=0.05)  # std 0.2 puts mass where 16 nodes miss it
    alpha = model.config.alpha
    lo, hi = -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)
    points, weights = gauss_legendre_grid(lo, hi, 16, 4)
    with torch.no_grad():
        density = model.log_density(points.reshape(-1, 1, 2, 2)).exp()  # (16^4,)
    assert abs((density * weights).sum().item() - 1.0) < 0.01
