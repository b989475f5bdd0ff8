"""Convolutional VAE (Kingma & Welling 2014) with a discretized logistic decoder per pixel.

The decoder (Salimans et al. 2017, one component) puts the mass of a logistic on the ``levels``
bins of the pixel intensities, with the tails folded into the end bins, so it is a proper
distribution over the discrete pixels and the ELBO is a lower bound on log P(x) in nats on the
data's protocol. At 2 levels (binarized MNIST) the two bins are exactly a Bernoulli with logit
(mean - 1/2) / scale: P(1) = sigmoid((mean - 1/2) / s) = 1 - P(0). ``iwae_log_prob`` tightens
the ELBO with k importance samples (Burda et al. 2016). Both are bounds on the same quantity:
ELBO <= IWAE_k <= IWAE_{k'} (k <= k') in expectation, and IWAE_k -> log P(x) as k grows.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import (
    GenerativeModel,
    TrainConfig,
    register_model,
    standard_normal_log_prob,
    to_uint8,
)

LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); H and W divisible by 4
    latent_dim: int = 32
    channels: tuple[int, int] = (32, 64)  # encoder widths; the decoder mirrors them
    hidden: int = 256  # fully connected layer between conv features and the latent
    levels: int = 256  # intensity levels of the discretized decoder
    # KL warm-up (Sønderby et al. 2016): the KL weight rises linearly from 0 to 1 over these training
    # steps. Without it the strong per-pixel decoder wins first and the posterior collapses (KL ~0.03
    # nats, 2.6 bits/dim on the quick profile). Evaluation and validation always use the true ELBO.
    kl_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.image_shape[1] % 4 or self.image_shape[2] % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {self.image_shape}")
        sizes = {"latent_dim": (self.latent_dim,), "hidden": (self.hidden,), "channels": self.channels}
        for name, values in sizes.items():
            if min(values) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be non-negative, got {self.kl_warmup_steps}")


def _gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def _log1mexp_inv_scale(log_scale: Tensor, a: Tensor) -> Tensor:
    """log(1 - exp(-a)) for a = exp(-log_scale) > 0: log(-expm1(-a)) for a < ln 2, else
    log1p(-exp(-a)) (Maechler 2012); below 1e-4 the series log a - a/2 (error < a^2/24), with
    log a = -log_scale exact even where a underflows. Each branch gets an argument inside its own
    domain (the "double where"), so branches not taken contribute no inf or NaN gradient."""
    big, small = a > math.log(2), a < 1e-4
    a_big = torch.where(big, a, torch.ones_like(a))
    a_mid = torch.where(big | small, torch.full_like(a, 0.5), a)
    mid = torch.log(-torch.expm1(-a_mid))
    return torch.where(big, torch.log1p(-torch.exp(-a_big)), torch.where(small, -log_scale - 0.5 * a, mid))


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """Elementwise log P(x) for integer x in 0..levels-1 under a logistic(mean, exp(log_scale))
    (in intensity units) discretized to unit bins, the tails folded into the end bins. Sums to one
    over the levels up to float rounding (exactly in real arithmetic).

    Stable in float32 everywhere, with finite gradients: with u, l the standardized upper and
    lower bin edges (u - l = 1/s), the mass of a middle bin factorizes exactly as
        sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(-(u - l))),
    the difference of log-sigmoids log sigmoid(u) + log1mexp(log sigmoid(u) - log sigmoid(l)) in
    closed form. Its log is a sum of three negative terms, so nothing cancels on either side of the
    mean (it is symmetric under u -> -l, l -> -u: the CDF form below the mean, the survival-function
    form above it) and no bin underflows. End bins: log sigmoid(u) (bottom), log sigmoid(-l) (top)."""
    x = x.float()
    inv_s = torch.exp(-log_scale)
    upper = (x + 0.5 - mean) * inv_s
    lower = (x - 0.5 - mean) * inv_s
    log_cdf_upper = F.logsigmoid(upper)  # log P(X < x + 1/2): the bottom bin's mass
    log_sf_lower = F.logsigmoid(-lower)  # log P(X > x - 1/2): the top bin's mass
    log_mid = log_cdf_upper + log_sf_lower + _log1mexp_inv_scale(log_scale, inv_s)
    return torch.where(x <= 0, log_cdf_upper, torch.where(x >= levels - 1, log_sf_lower, log_mid))


def discretized_logistic_mean(mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """The expected pixel value sum_x x P(x) of the discretized logistic, elementwise, as
    sum over the bin edges e of P(X > e) = sigmoid((mean - e) / s); a block of edges at a time, so
    memory stays that of the parameters whatever the number of levels."""
    inv_s = torch.exp(-log_scale).unsqueeze(-1)  # (..., 1)
    total = torch.zeros_like(mean)
    edges = torch.arange(levels - 1, device=mean.device, dtype=torch.float32) + 0.5  # (L-1,)
    for block in edges.split(32):
        total += torch.sigmoid((mean.unsqueeze(-1) - block) * inv_s).sum(-1)
    return total


def _smoke() -> tuple[VAEConfig, TrainConfig]:
    return (
        VAEConfig(latent_dim=8, channels=(8, 16), hidden=32),
        TrainConfig(
            epochs=1,
            max_steps=30,
            batch_size=32,
            lr=2e-3,
            val_images=256,
            checkpoint_every=10,
            log_every=5,
        ),
    )


def _quick() -> tuple[VAEConfig, TrainConfig]:
    return (
        VAEConfig(latent_dim=32, channels=(32, 64), hidden=256, kl_warmup_steps=500),
        TrainConfig(epochs=3, batch_size=128, lr=1e-3, val_images=2000, checkpoint_every=200),
    )


def _full() -> tuple[VAEConfig, TrainConfig]:
    return (
        VAEConfig(latent_dim=64, channels=(64, 128), hidden=512, kl_warmup_steps=10_000),
        TrainConfig(epochs=100, batch_size=128, lr=5e-4, checkpoint_every=2000, log_every=100),
    )


@register_model("vae")
class VAE(GenerativeModel):
    likelihood = "estimate"  # the ELBO with one posterior draw: a Monte-Carlo estimate of a bound
    importance_weighted = True
    can_reconstruct = True
    can_interpolate = True
    has_decoder = True
    Config = VAEConfig
    profiles = {"smoke": _smoke, "quick": _quick, "full": _full}

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        c1, c2 = config.channels
        c, h, w = config.image_shape
        self.feature_shape = (c2, h // 4, w // 4)
        flat = c2 * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.SiLU(),  # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.SiLU(),  # (B, c2, H/4, W/4)
            nn.Flatten(),
            nn.Linear(flat, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),  # mu and log-variance
        )
        self.decoder_fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, flat),
            nn.SiLU(),
        )
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.SiLU(),  # (B, c1, H/2, W/2)
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1),
            nn.SiLU(),  # (B, c1, H, W)
            nn.Conv2d(c1, 2 * c, 1),  # (B, 2C, H, W): logistic means, then log-scales, per pixel
        )
        # Start the decoder wide (scale ~20 of 255 intensity steps, the same fraction of the range at
        # any level count): a narrow logistic far from the data gives huge gradients in the first steps
        # that blow up the encoder (KL in the thousands). At 2 levels that is a Bernoulli logit
        # (mean - 1/2) / 0.078, wide enough to learn from; 20 levels there would flatten every pixel
        # to p ~ 1/2 and stall the start.
        with torch.no_grad():
            self.decoder_conv[-1].bias[c:] = math.log(20.0 * (config.levels - 1) / 255)

    # --- the model's parts --------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x.float() / (self.config.levels - 1) * 2 - 1)  # (B, 2Z)
        mu, logvar = h.float().chunk(2, dim=-1)  # (B, Z) each
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder parameters in intensity units: mean and log-scale, (B, C, H, W) each."""
        h = self.decoder_conv[:-1](self.decoder_fc(z).view(-1, *self.feature_shape))  # (B, c1, H, W)
        # The output layer in fp32 even under bf16 autocast: its mean is in intensity units, where a
        # bf16 rounding is worth several levels and the likelihood terms would inherit it.
        with torch.autocast(h.device.type, enabled=False):
            out = self.decoder_conv[-1](h.float())  # (B, 2C, H, W)
        mean_raw, log_scale = out.chunk(2, dim=1)  # (B, C, H, W) each
        top = self.config.levels - 1
        mean = (mean_raw + 1) * (top / 2)  # unbounded: the end bins absorb the tails; tanh saturated
        return mean, log_scale.clamp(min=-7.0)  # a clamp above would stop the gradient of wide pixels

    def _log_px_given_z(self, params: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """Exact discrete log P(x | z) per image, summed over pixels and channels."""
        mean, log_scale = params
        log_p = discretized_logistic_log_prob(x, mean, log_scale, self.config.levels)  # (B, C, H, W)
        return log_p.flatten(1).sum(1)  # (B,)

    def _elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        log_px = self._log_px_given_z(self.decode(z), x)  # (B,)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # (B,) KL(q || N(0, I))
        return log_px, kl

    # --- the interface ------------------------------------------------------------------------
    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """The negative ELBO in nats per image (beta = 1), with its reconstruction and KL terms."""
        log_px, kl = self._elbo_terms(x)
        nelbo = (kl - log_px).mean()
        return {"loss": nelbo, "recon": -log_px.mean(), "kl": kl.mean()}

    def training_loss(self, x: Tensor, step: int) -> dict[str, Tensor]:
        """-(log P(x|z) - beta KL), beta rising linearly from 0 to 1 over the KL warm-up steps."""
        warmup = self.config.kl_warmup_steps
        if warmup <= 0:
            return self.loss(x)
        log_px, kl = self._elbo_terms(x)
        beta = min(step / warmup, 1.0)
        recon, kl_mean = -log_px.mean(), kl.mean()
        return {
            "loss": recon + beta * kl_mean,
            "beta": kl_mean.new_tensor(beta),
            "nelbo": (recon + kl_mean).detach(),
            "recon": recon,
            "kl": kl_mean,
        }

    def log_prob(self, x: Tensor) -> Tensor:
        """The ELBO per image in nats (a lower bound on log P(x)), one posterior sample."""
        log_px, kl = self._elbo_terms(x)
        return log_px - kl

    def likelihood_estimator(self) -> str:
        return "negative ELBO, one posterior sample per image"

    def iwae_log_prob(self, x: Tensor, k: int, chunk: int = 64) -> Tensor:
        """log (1/k) sum_i P(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); k posterior samples per image,
        decoded ``chunk`` at a time to bound memory."""
        mu, logvar = self.encode(x)  # (B, Z)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn(m, *mu.shape, device=mu.device)  # (m, B, Z)
            z = mu + eps * std  # (m, B, Z)
            params = self.decode(z.flatten(0, 1))  # (m*B, H, W) each
            log_px = self._log_px_given_z(params, x.repeat(m, 1, 1, 1)).view(m, -1)  # (m, B)
            log_pz = standard_normal_log_prob(z)  # (m, B)
            log_qz = _gaussian_log_density(z, mu, logvar)  # (m, B)
            log_w.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)  # (B,)

    def _mean_image(self, z: Tensor) -> Tensor:
        """Expected pixel value in [0, 1] under the decoder, (B, C, H, W)."""
        return discretized_logistic_mean(*self.decode(z), self.config.levels) / (self.config.levels - 1)

    def sample_modes(self) -> dict[str, str]:
        return {"mean": "decoder mean", "sample": "sampled pixels"}

    def _decode_images(self, z: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
        if mode == "mean":  # the expected image, as VAE papers usually show
            return to_uint8(self._mean_image(z), self.config.levels)
        if mode != "sample":
            raise ValueError(f"unknown sample mode {mode!r}; choose from {', '.join(self.sample_modes())}")
        # Rounding and clamping a logistic draw is exactly a draw of the discretized logistic.
        mean, log_scale = self.decode(z)
        u = torch.rand(mean.shape, device=mean.device, generator=generator).clamp(1e-6, 1 - 1e-6)
        x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return x.round().clamp(0, self.config.levels - 1).to(torch.uint8)

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.config.latent_dim, device=self.device, generator=generator)  # (n, Z)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def decoder_log_prob(self, x: Tensor, z: Tensor, noise: float | None = None) -> Tensor:
        return self._log_px_given_z(self.decode(z), x)

    def decoder_sample(
        self, z: Tensor, noise: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        with torch.no_grad():
            return self._decode_images(z, "sample", generator)

    def decoder_description(self, noise: float | None = None) -> str:
        return "the VAE's own decoder (discretized logistic per pixel)"

    def decode_latents(self, z: Tensor) -> Tensor:
        return self._decode_images(z, "mean")

    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        return self._decode_images(self.prior_latents(n, generator), mode or "mean", generator)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Expected pixel value in [0, 1] under the decoder at the posterior mean."""
        mu, _ = self.encode(x)
        return self._mean_image(mu)
