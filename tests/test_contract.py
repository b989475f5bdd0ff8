"""Every registered family honours the interface (smoke configs, fake data). Skips are by capability."""

import dataclasses

import pytest
import torch
from genbench import models
from genbench.models.base import PROFILE_NAMES, TrainConfig

NAMES = sorted(models.MODELS)


def _smoke(name):
    torch.manual_seed(0)
    model, cfg = models.build(name, "smoke")
    return model, cfg


@pytest.fixture(params=NAMES)
def family(request):
    return _smoke(request.param)


def test_registry_holds_the_four_families():
    assert {"vae", "gan", "pixelcnn", "flow"} <= set(models.MODELS)
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
    out = model.train_step(x, model.configure_optimizers(cfg.lr))
    assert "loss" in out and not out["loss"].requires_grad
    # any change: flows zero-initialise their coupling outputs, so early layers move only later
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=False)), (
        "train_step changed nothing"
    )


def test_sample_contract(family):
    model, _ = family
    model.eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == (4, *model.image_shape)
    assert torch.equal(a, b), "sampling with the same generator seed must be reproducible"


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
