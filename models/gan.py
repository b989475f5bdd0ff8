"""DCGAN (Radford et al., 2016) for 28x28 digits, trained with the non-saturating loss.

The generator projects a Gaussian latent to a 7x7 feature map and doubles it twice with transposed
convolutions (7 -> 14 -> 28); the discriminator halves twice with strided convolutions and ends in
one logit, so both losses are BCE-with-logits (numerically stable, and no sigmoid to saturate).
The generator's output lies in [-1, 1] (tanh); real images are mapped to the same range before the
discriminator sees them, and samples are mapped back to uint8.

A GAN has no likelihood and no encoder: ``likelihood = None``, ``can_reconstruct = False``. To
estimate one anyway (annealed importance sampling, metrics/ais.py; Wu et al. 2017), the generator
becomes the mean of an observation model p(x | z): for 8-bit data a discretized Gaussian with one σ
per run (chosen on validation images from ``SIGMA_GRID``), for binarized data a Bernoulli with
mean (G(z) + 1) / 2 clipped to [BERNOULLI_CLIP, 1 - BERNOULLI_CLIP].
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import (
    GenerativeModel,
    Optimization,
    TrainConfig,
    register_model,
    standard_normal_log_prob,
    to_uint8,
    to_unit,
)
from genbench.models.gaussians import discretized_gaussian_log_prob

# Adam with beta1 = 0.5, as in DCGAN: the default 0.9 makes the two-player dynamics oscillate.
ADAM_BETAS = (0.5, 0.999)
# The observation model's σ on the generator's [-1, 1] scale (one 8-bit level is 2/255 ≈ 0.0078 of
# it): doublings from about 3 levels to 64, the range in which a trained DCGAN's best σ falls.
SIGMA_GRID = (0.025, 0.05, 0.1, 0.2, 0.4)
# Binarized data: the Bernoulli mean stays this far from 0 and 1, so a saturated tanh that
# disagrees with a pixel costs log(1e3) ≈ 6.9 nats instead of infinity.
BERNOULLI_CLIP = 1e-3


@dataclasses.dataclass(frozen=True)
class GANConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); H, W multiples of 4 (two stride-2 stages)
    levels: int = 256  # intensity levels of the samples
    latent_dim: int = 100
    g_channels: int = 64  # generator: 2 * g_channels at size/4, g_channels at size/2
    d_channels: int = 64  # discriminator: d_channels at size/2, 2 * d_channels at size/4

    def __post_init__(self) -> None:
        _, h, w = self.image_shape
        if min(h, w) < 8 or h % 4 or w % 4:
            raise ValueError(
                f"image height and width must be multiples of 4, at least 8; got {self.image_shape}"
            )
        for name in ("latent_dim", "g_channels", "d_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def to_output_range(x: Tensor, levels: int = 256) -> Tensor:
    """Pixels 0..levels-1 -> float [-1, 1], the generator's tanh range, so real and fake images match."""
    return to_unit(x, levels) * 2.0 - 1.0


def from_output_range(x: Tensor, levels: int = 256) -> Tensor:
    """Generator output in [-1, 1] -> uint8 pixels 0..levels-1."""
    return to_uint8((x.float() + 1.0) / 2.0, levels)


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights and N(1, 0.02) batch-norm scales, the DCGAN initialisation."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        g = config.g_channels
        c, h, w = config.image_shape
        # Layers followed by batch norm have no bias: the norm's shift makes it redundant.
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, 2 * g * (h // 4) * (w // 4), bias=False),
            nn.Unflatten(1, (2 * g, h // 4, w // 4)),
            nn.BatchNorm2d(2 * g),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * g, g, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(g),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(g, c, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, latent) -> (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        d = config.d_channels
        c, h, w = config.image_shape
        # No batch norm on the first layer (DCGAN): it would normalise away the input's statistics.
        self.features = nn.Sequential(
            nn.Conv2d(c, d, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(d, 2 * d, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * d),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * d * (h // 4) * (w // 4), 1)  # a logit: the sigmoid lives inside the loss

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1).float()  # (B, C, H, W) -> (B,) float32 logits


def d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(z))), batch means."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating -log D(G(z)): its gradient stays large when D confidently rejects the fakes,
    where the minimax log(1 - D(G(z))) vanishes (early training)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def _smoke() -> tuple[GANConfig, TrainConfig]:
    return GANConfig(latent_dim=16, g_channels=8, d_channels=8), TrainConfig(
        max_steps=30,
        batch_size=32,
        lr=2e-4,
        val_images=256,
        checkpoint_every=10,
        log_every=5,
        betas=ADAM_BETAS,
    )


def _quick() -> tuple[GANConfig, TrainConfig]:
    # 4000 steps of 64 (4.7 epochs): about 105 s at ~2,400 img/s on 2 idle cores. Digits are
    # recognisable from ~3000 steps; at 1500 many are still malformed.
    return GANConfig(latent_dim=64, g_channels=32, d_channels=32), TrainConfig(
        epochs=5,
        batch_size=64,
        lr=5e-4,
        max_steps=4000,
        val_images=1000,
        checkpoint_every=1000,
        log_every=50,
        betas=ADAM_BETAS,
    )


def _full() -> tuple[GANConfig, TrainConfig]:
    return GANConfig(latent_dim=100, g_channels=128, d_channels=64), TrainConfig(
        epochs=30, batch_size=128, lr=2e-4, checkpoint_every=2000, log_every=50, betas=ADAM_BETAS
    )


@register_model("gan", aliases=("dcgan",))
class GAN(GenerativeModel):
    likelihood = None
    can_reconstruct = False
    can_interpolate = True
    has_decoder = True
    Config: ClassVar[type] = GANConfig
    profiles: ClassVar = {"smoke": _smoke, "quick": _quick, "full": _full}

    def __init__(self, config: GANConfig) -> None:
        super().__init__(config)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.apply(init_dcgan_weights)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def _prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.config.latent_dim, device=self.device, generator=generator)  # (n, latent)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Both players' losses on a uint8 batch and fresh latents, with no update (validation).
        "loss" = loss_d + loss_g is for logging and finiteness checks; it is not an objective."""
        real = to_output_range(x, self.levels)  # (B, C, H, W) in [-1, 1]
        fake = self.generator(self._prior(len(x)))  # (B, C, H, W)
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)  # (B,), (B,)
        return self._terms(d_loss(real_logits, fake_logits), g_loss(fake_logits), real_logits, fake_logits)

    def train_step(self, x: Tensor, optim: Optimization, step: int) -> dict[str, Tensor]:
        """A discriminator step on detached fakes, then a generator step through the updated D."""
        fake = self.generator(self._prior(len(x)))  # (B, C, H, W), one forward shared by both steps

        # Discriminator: fakes are detached so D's loss leaves G's gradients empty.
        loss_d, real_logits, fake_logits = self._discriminator_loss(x, fake.detach())
        optim.step("d", loss_d)

        # Generator: D's parameters are frozen so the backward pass writes no gradient into them.
        self.discriminator.requires_grad_(False)
        try:
            loss_g = self._generator_loss(fake)
            optim.step("g", loss_g)
        finally:
            self.discriminator.requires_grad_(True)
        return {k: v.detach() for k, v in self._terms(loss_d, loss_g, real_logits, fake_logits).items()}

    def _discriminator_loss(self, x: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        real_logits = self.discriminator(to_output_range(x, self.levels))  # (B,) on [-1, 1] images
        fake_logits = self.discriminator(fake)  # (B,)
        return d_loss(real_logits, fake_logits), real_logits, fake_logits

    def _generator_loss(self, fake: Tensor) -> Tensor:
        return g_loss(self.discriminator(fake))

    def compile_step(self, **options) -> None:
        """Three graphs, each back-propagated once per step: G's forward, D's loss, G's loss."""
        self.generator.compile(**options)
        self._discriminator_loss = torch.compile(self._discriminator_loss, **options)
        self._generator_loss = torch.compile(self._generator_loss, **options)

    @staticmethod
    def _terms(loss_d: Tensor, loss_g: Tensor, real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
        # The sum carries a NaN from either network, which stops the harness's finiteness check.
        return {
            "loss": loss_d + loss_g,
            "loss_d": loss_d,
            "loss_g": loss_g,
            "d_real": torch.sigmoid(real_logits).mean(),  # mean D(x); 0.5 at equilibrium
            "d_fake": torch.sigmoid(fake_logits).mean(),  # mean D(G(z)) before this step's D update
        }

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._prior(n, generator)

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        return from_output_range(self.generator(z), self.levels)  # (n, C, H, W) uint8

    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        return self.decode_latents(self._prior(n, generator))

    # --- the observation model p(x | z) for annealed importance sampling -------------------------
    def prior_log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def decoder_noise_grid(self) -> tuple[float, ...]:
        return SIGMA_GRID if self.levels > 2 else ()

    def decoder_description(self, noise: float | None = None) -> str:
        if self.levels == 2:
            return f"Bernoulli, mean (G(z) + 1) / 2 clipped to [{BERNOULLI_CLIP}, {1 - BERNOULLI_CLIP}]"
        levels = noise * (self.levels - 1) / 2
        return (
            f"discretized Gaussian, mean G(z), σ = {noise} on the generator's [-1, 1] scale "
            f"({levels:.3g} of {self.levels - 1} intensity steps)"
        )

    def decoder_log_prob(self, x: Tensor, z: Tensor, noise: float | None = None) -> Tensor:
        """log p(x | z) per image: each pixel's bin under N(G(z), σ²) (end bins take the tails), or
        a clipped Bernoulli on binarized data. In float32 like the VAE's decoder, summed in float64:
        float64 is 10x slower on a CPU here and moves a 784-pixel image's total by < 0.004 nats at
        σ ≥ 0.1 (0.06 at σ = 0.025), far inside AIS's own noise."""
        mean = self.generator(z).float()  # (N, C, H, W) in [-1, 1]
        target = to_output_range(x, self.levels)  # the bin centres on the same scale
        if self.levels == 2:
            p = ((mean + 1) / 2).clamp(BERNOULLI_CLIP, 1 - BERNOULLI_CLIP)
            log_p = torch.where(target > 0, torch.log(p), torch.log1p(-p))
        else:
            if noise is None:
                raise ValueError(f"the GAN's observation model needs a σ; choose from {SIGMA_GRID}")
            log_std = torch.full_like(mean, math.log(noise))
            log_p = discretized_gaussian_log_prob(target, mean, log_std, self.levels)
        return log_p.double().flatten(1).sum(1)  # (N,)

    @torch.no_grad()
    def decoder_sample(
        self, z: Tensor, noise: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """x ~ p(x | z): G(z) + σε rounded to the nearest level (the bins of decoder_log_prob, the
        tails clamped into the end bins), or Bernoulli pixels on binarized data."""
        mean = self.generator(z).float()  # (N, C, H, W)
        draw = torch.rand if self.levels == 2 else torch.randn
        u = draw(mean.shape, device=mean.device, generator=generator)
        if self.levels == 2:
            p = ((mean + 1) / 2).clamp(BERNOULLI_CLIP, 1 - BERNOULLI_CLIP)
            return (u < p).to(torch.uint8)
        return from_output_range(mean + noise * u, self.levels)
