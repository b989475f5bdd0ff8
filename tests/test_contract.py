"""Every registered family honours the interface (smoke configs, fake data). Skips are by capability."""

import dataclasses

import pytest
import torch
from model_utils import optimizers_for

from genbench import models
from genbench.models.base import PROFILE_NAMES, TrainConfig, slerp

NAMES = sorted(models.MODELS)


def _smoke(name):
    torch.manual_seed(0)
    model, cfg = models.build(name, "smoke")
    return model, cfg


@pytest.fixture(params=NAMES)
def family(request):
    return _smoke(request.param)


def test_registry_holds_the_seven_families():
    assert {"vae", "gan", "pixelcnn", "transformer", "flow", "glow", "diffusion"} <= set(models.MODELS)
    assert models.get_model_class("realnvp") is models.get_model_class("flow")


@pytest.mark.parametrize("name", NAMES)
def test_profiles_are_typed_and_fresh(name):
    cls = models.get_model_class(name)
    for profile in PROFILE_NAMES:
        config, train = cls.profiles[profile]()
        assert isinstance(config, cls.Config) and isinstance(train, TrainConfig)
        assert dataclasses.is_dataclass(config)
        again, _ = cls.profiles[profile]()
        assert again == config and again is not config


def test_loss_and_train_step(family, fake_data):
    model, cfg = family
    x = fake_data.train[:8]
    terms = model.loss(x)
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])
    before = [p.detach().clone() for p in model.parameters()]
    out = model.train_step(x, optimizers_for(model, config=cfg), 0)
    assert "loss" in out and not out["loss"].requires_grad
    # any change: flows zero-initialise their coupling outputs, so early layers move only later
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=False)), (
        "train_step changed nothing"
    )


def test_sample_contract(family):
    model, _ = family
    model.eval()
    threads = torch.get_num_threads()
    modes = model.sample_modes()
    assert modes and all(isinstance(k, str) and isinstance(v, str) for k, v in modes.items())
    for mode in (None, *modes):
        a = model.sample(4, generator=torch.Generator().manual_seed(0), mode=mode)
        b = model.sample(4, generator=torch.Generator().manual_seed(0), mode=mode)
        assert a.dtype == torch.uint8 and a.shape == (4, *model.image_shape)
        assert int(a.max()) < model.levels
        assert torch.equal(a, b), "sampling with the same generator seed must be reproducible"
    assert torch.get_num_threads() == threads, "a model never changes process-wide settings"


def test_interpolation_contract(family):
    model, _ = family
    if not model.can_interpolate:
        pytest.skip(f"{model.name} declares no latent interpolation")
    model.eval()
    with torch.no_grad():
        path = model.interpolate(2, 4, generator=torch.Generator().manual_seed(0))
        z = model.prior_latents(2, generator=torch.Generator().manual_seed(0))
        ends = model.decode_latents(z)
    assert path.dtype == torch.uint8 and path.shape == (2, 4, *model.image_shape)
    assert torch.equal(path[:, 0], ends), "the path starts at the decoded prior latents"


def test_image_shape_and_levels_come_from_the_config(family):
    model, _ = family
    assert model.image_shape == tuple(model.config.image_shape)
    assert model.dims == model.image_shape[0] * model.image_shape[1] * model.image_shape[2]
    assert model.levels == model.config.levels


def test_slerp_hits_the_endpoints_and_keeps_the_norm_on_the_arc():
    z0 = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    z1 = torch.tensor([[0.0, 3.0], [1.0, 1.0]])  # orthogonal pair; identical pair (lerp fallback)
    path = slerp(z0, z1, torch.linspace(0, 1, 5))  # (2, 5, 2)
    assert torch.allclose(path[:, 0], z0, atol=1e-6) and torch.allclose(path[:, -1], z1, atol=1e-6)
    assert torch.allclose(path[0].norm(dim=1), torch.full((5,), 3.0), atol=1e-5)  # lerp would dip to 2.12
    assert torch.allclose(path[1], z0[1].expand(5, 2))
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(4, 64, dtype=torch.float64, generator=g),
        torch.randn(4, 64, dtype=torch.float64, generator=g),
    )
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)  # equal norms stay equal on the arc
    arc = slerp(a, b, torch.linspace(0, 1, 5, dtype=torch.float64))  # (4, 5, 64)
    assert torch.allclose(arc.norm(dim=2), a.norm(dim=1, keepdim=True).expand(4, 5))


def test_log_prob_is_finite_per_image(family, fake_data):
    model, _ = family
    if model.likelihood is None:
        with pytest.raises(NotImplementedError):
            model.log_prob(fake_data.test[:2])
        return
    model.eval()
    with torch.no_grad():
        lp = model.log_prob(fake_data.test[:6])
    assert lp.shape == (6,) and torch.all(torch.isfinite(lp))
    # a log-probability of discrete 8-bit images (or a bound on one) is at most 0
    assert torch.all(lp <= 1e-3)


def test_reconstruct_contract(family, fake_data):
    model, _ = family
    if not model.can_reconstruct:
        pytest.skip(f"{model.name} cannot reconstruct")
    model.eval()
    with torch.no_grad():
        r = model.reconstruct(fake_data.test[:3])
    assert r.shape == (3, *model.image_shape) and r.is_floating_point()
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0


def test_state_dict_round_trip_reproduces_outputs(family, fake_data, tmp_path):
    model, _ = family
    model.eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    clone, _ = _smoke(model.name)
    clone.load_state_dict(torch.load(path, weights_only=True))
    clone.eval()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(model.sample(2, generator=g1), clone.sample(2, generator=g2))
