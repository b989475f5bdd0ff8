"""DCGAN: the alternating update keeps the players apart, the losses mean what they say, sampling is
seeded, and a NaN reaches "loss" so the harness stops."""

from __future__ import annotations

import math

import pytest
import torch
from model_utils import optimizers_for

from genbench.models.base import build, get_model_class
from genbench.models.gan import ADAM_BETAS, GAN, GANConfig, from_output_range, to_output_range

TINY = GANConfig(latent_dim=8, g_channels=4, d_channels=4)


def tiny_model(seed: int = 0, config: GANConfig = TINY) -> GAN:
    torch.manual_seed(seed)
    return GAN(config)


def fake_batch(n: int = 16, size: int = 28, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def is_clean(g: torch.Tensor | None) -> bool:
    return g is None or not g.any()


def test_registered_without_likelihood_or_reconstruction():
    assert get_model_class("gan") is GAN and get_model_class("dcgan") is GAN
    assert GAN.likelihood is None and GAN.can_reconstruct is False
    model, train_config = build("gan", "smoke")
    assert train_config.max_steps == 30 and train_config.batch_size == 32
    optimizers = optimizers_for(model, config=train_config)
    assert set(optimizers.optimizers) == {"d", "g"}
    for opt in optimizers.optimizers.values():
        assert opt.defaults["betas"] == (0.5, 0.999)


def test_train_step_updates_both_players_and_keeps_their_gradients_apart():
    """Spies on the two optimizers' steps: D's step must see no gradient on G (fakes detached);
    G's backward must add nothing to D's gradients and nothing may move D after D's own step."""
    model = tiny_model()
    model.train()
    opts = optimizers_for(model, betas=ADAM_BETAS)
    g_before, d_before = params(model.generator), params(model.discriminator)
    seen: dict[str, object] = {"order": []}

    def d_pre(opt, args, kwargs):
        seen["order"].append("d")
        seen["g_grads_at_d_step"] = grads(model.generator)
        seen["d_grads_at_d_step"] = grads(model.discriminator)

    def d_post(opt, args, kwargs):
        seen["d_after_d_step"] = params(model.discriminator)

    def g_pre(opt, args, kwargs):
        seen["order"].append("g")
        seen["d_grads_at_g_step"] = grads(model.discriminator)
        seen["d_at_g_step"] = params(model.discriminator)
        seen["g_grads_at_g_step"] = grads(model.generator)

    opts.optimizers["d"].register_step_pre_hook(d_pre)
    opts.optimizers["d"].register_step_post_hook(d_post)
    opts.optimizers["g"].register_step_pre_hook(g_pre)
    terms = model.train_step(fake_batch(), opts, 0)

    assert seen["order"] == ["d", "g"]
    # D's loss leaked no gradient into G.
    assert all(is_clean(g) for g in seen["g_grads_at_d_step"].values())
    assert all(g is not None and g.any() for g in seen["d_grads_at_d_step"].values())
    # G's backward wrote nothing into D's gradients (cleared or untouched, never accumulated).
    for name, g in seen["d_grads_at_g_step"].items():
        assert g is None or torch.equal(g, seen["d_grads_at_d_step"][name]), name
    assert all(g is not None and g.any() for g in seen["g_grads_at_g_step"].values())
    # D moved exactly once, in its own step; G moved in its step.
    d_after = params(model.discriminator)
    for name, p in d_after.items():
        assert not torch.equal(p, d_before[name]), f"D parameter {name} was not updated"
        assert torch.equal(p, seen["d_after_d_step"][name]), f"D parameter {name} moved after D's step"
        assert torch.equal(seen["d_at_g_step"][name], p)
    for name, p in params(model.generator).items():
        assert not torch.equal(p, g_before[name]), f"G parameter {name} was not updated"
    assert all(p.requires_grad for p in model.parameters()), "D must be trainable again after the G step"

    assert set(terms) == {"loss", "loss_d", "loss_g", "d_real", "d_fake"}
    assert all(t.ndim == 0 and not t.requires_grad for t in terms.values())
    assert torch.allclose(terms["loss"], terms["loss_d"] + terms["loss_g"])
    assert 0.0 < terms["d_real"].item() < 1.0 and 0.0 < terms["d_fake"].item() < 1.0


@pytest.mark.parametrize("bias", [0.0, -10.0, 3.0])
def test_losses_for_a_constant_discriminator(bias):
    """With D's logit fixed at b: D loss = softplus(-b) + softplus(b), the non-saturating G loss
    -log sigmoid(b) = softplus(-b) (about 10 at b = -10, where log(1 - D) would be about 0)."""
    model = tiny_model().eval()
    with torch.no_grad():
        model.discriminator.head.weight.zero_()
        model.discriminator.head.bias.fill_(bias)
        terms = model.loss(fake_batch())
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    sigmoid = 1.0 / (1.0 + math.exp(-bias))
    assert terms["loss_d"].item() == pytest.approx(softplus(-bias) + softplus(bias), rel=1e-5)
    assert terms["loss_g"].item() == pytest.approx(softplus(-bias), rel=1e-5)
    assert terms["d_real"].item() == pytest.approx(sigmoid, rel=1e-5)
    assert terms["d_fake"].item() == pytest.approx(sigmoid, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["loss_d"].item() + terms["loss_g"].item(), rel=1e-6)


def test_loss_is_finite_and_updates_nothing():
    model = tiny_model()
    x = fake_batch()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        terms = model.loss(x)
    assert set(terms) == {"loss", "loss_d", "loss_g", "d_real", "d_fake"}
    assert all(torch.isfinite(t) for t in terms.values())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # In train mode batch norm refreshes its running statistics, but no parameter moves.
    model.train()
    before = params(model)
    with torch.no_grad():
        model.loss(x)
    assert all(torch.equal(p, before[name]) for name, p in params(model).items())


def test_real_images_share_the_generator_range():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    real = to_output_range(x)
    assert real.min().item() == -1.0 and real.max().item() == 1.0
    assert torch.equal(from_output_range(real), x)  # the sample mapping inverts the real mapping
    model = tiny_model().eval()
    with torch.no_grad():
        out = model.generator(torch.randn(4, TINY.latent_dim) * 100)  # saturate the tanh
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_samples_are_seeded_uint8_images():
    model = tiny_model().eval()
    a = model.sample(6, torch.Generator().manual_seed(0))
    b = model.sample(6, torch.Generator().manual_seed(0))
    c = model.sample(6, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 28, 28)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # different latents in one batch give different images
    assert a.float().std() > 0  # not a constant image


def test_latent_interpolation_starts_at_the_prior_samples():
    model = tiny_model().eval()
    path = model.interpolate(3, 5, torch.Generator().manual_seed(4))
    assert path.dtype == torch.uint8 and path.shape == (3, 5, 1, 28, 28)
    # The first endpoints are the first 3 prior draws, exactly what sample() draws with this seed.
    assert torch.equal(path[:, 0], model.sample(3, torch.Generator().manual_seed(4)))
    assert not torch.equal(path[:, 0], path[:, -1])
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(1, 1)


@pytest.mark.parametrize("network", ["generator", "discriminator"])
def test_nan_weight_makes_loss_non_finite(network):
    model = tiny_model()
    opts = optimizers_for(model)
    with torch.no_grad():
        next(getattr(model, network).parameters()).view(-1)[0] = float("nan")
    terms = model.train_step(fake_batch(), opts, 0)
    assert not torch.isfinite(terms["loss"])
    with torch.no_grad():
        assert not torch.isfinite(model.loss(fake_batch())["loss"])


def test_config_accepts_multiples_of_four_only():
    model = tiny_model(config=GANConfig(image_shape=(1, 32, 32), latent_dim=8, g_channels=4, d_channels=4))
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 32, 32)
    opts = optimizers_for(model)
    assert torch.isfinite(model.train_step(fake_batch(size=32), opts, 0)["loss"])
    with pytest.raises(ValueError, match="multiples of 4"):
        GANConfig(image_shape=(1, 30, 30))
    with pytest.raises(ValueError, match="latent_dim"):
        GANConfig(latent_dim=0)


@pytest.mark.slow
def test_short_training_on_mnist_moves_samples_towards_the_data():
    """A few hundred steps on real MNIST: dark backgrounds with bright strokes, like the data."""
    from genbench.bench.engine.data import batches, epoch_order, load_mnist

    data = load_mnist("/work/shared/data")
    torch.manual_seed(0)
    model, train_config = build("gan", "quick")
    opts = optimizers_for(model, config=train_config)
    model.train()
    order = epoch_order(len(data.train), 0, 0)
    for step, x in enumerate(batches(data.train, 64, order, drop_last=True)):
        terms = model.train_step(x, opts, step)
        if step == 300:
            break
    assert torch.isfinite(terms["loss"])
    samples = model.eval().sample(256, torch.Generator().manual_seed(0)).float() / 255
    real = data.test[:256].float() / 255
    assert abs(samples.mean().item() - real.mean().item()) < 0.08
    assert (samples < 0.1).float().mean() > 0.6  # mostly background, as in MNIST (about 0.8)
    assert samples.std(dim=0).mean() > 0.1  # samples differ from each other
