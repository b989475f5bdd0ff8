import math

import pytest
import torch
from genbench import models
from genbench.models.vae import VAEConfig, discretized_logistic_log_prob, discretized_logistic_probs


def test_discretized_logistic_is_normalized_over_levels():
    mean = torch.tensor([-30.0, 0.0, 3.7, 128.0, 254.6, 300.0, 77.0])
    log_scale = torch.tensor([0.0, -3.0, 1.0, 4.0, -1.0, 2.0, -7.0])
    levels = torch.arange(256, dtype=torch.float32).view(-1, 1)  # (256, 1)
    log_p = discretized_logistic_log_prob(levels.expand(-1, 7), mean, log_scale, 256)  # (256, 7)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(7), atol=1e-5, rtol=0)
    probs = discretized_logistic_probs(mean.view(1, 7, 1), log_scale.view(1, 7, 1), 256)  # (1, 256, 7, 1)
    torch.testing.assert_close(probs[0, :, :, 0], log_p.exp(), atol=1e-6, rtol=0)


def _small_vae(seed=0):
    torch.manual_seed(seed)
    return models.get_model_class("vae")(VAEConfig(latent_dim=4, channels=(4, 8), hidden=16))


def test_elbo_is_exact_for_a_tiny_case():
    """log P(x) by brute-force quadrature over a 1-D latent upper-bounds the ELBO and IWAE tends to it."""
    torch.manual_seed(0)
    vae = models.get_model_class("vae")(VAEConfig(image_size=4, latent_dim=1, channels=(2, 2), hidden=4))
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    z = torch.linspace(-8, 8, 4001).view(-1, 1)  # quadrature grid on the prior
    with torch.no_grad():
        log_px = torch.stack(
            [vae._log_px_given_z(vae.decode(z.float()), xi.expand(len(z), -1, -1, -1)) for xi in x]
        )  # (2, G)
        log_prior = -0.5 * (math.log(2 * math.pi) + z.view(-1) ** 2)
        exact = torch.logsumexp(log_px + log_prior, 1) + math.log(z[1, 0] - z[0, 0])
        elbo = torch.stack([vae.log_prob(x) for _ in range(200)]).mean(0)
        iwae = vae.iwae_log_prob(x, k=20000, chunk=2000)
    assert torch.all(elbo <= exact + 1e-6)
    torch.testing.assert_close(iwae, exact, atol=0.05, rtol=0)


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
    from genbench.bench.data import batches, epoch_order, load_mnist

    data = load_mnist(mnist_dir)
    torch.manual_seed(0)
    vae, cfg = models.build("vae", "smoke")
    opt = vae.configure_optimizers(cfg.lr)
    x = data.test[:256]

    def mse():
        with torch.no_grad():
            return float((vae.reconstruct(x) - x.float() / 255).pow(2).mean())

    before = mse()
    for step, batch in enumerate(batches(data.train, 32, epoch_order(len(data.train), 0, 0), drop_last=True)):
        vae.train_step(batch, opt)
        if step == 200:
            break
    assert mse() < 0.6 * before
