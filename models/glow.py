"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of act norm, invertible 1x1 convolution and
affine coupling, with learned conditional Gaussian priors for the factored-out halves.

Glow is a variant of the flow family: the same bijection between dequantized images and latents,
the same dequantization and logit transform and the same likelihood accounting as RealNVP
(``models/realnvp.py`` explains them), so this class inherits all of that from ``RealNVP`` and
replaces only the stack of invertible layers. What it declares about its likelihood is RealNVP's,
by inheritance, so a change to that protocol reaches both families at once.

Architecture for 1x28x28 with n_levels = 2 (K = n_steps):

    1x28x28 -> squeeze -> 4x14x14, K steps -> split: 2x14x14 out (prior N(mu, sigma) from the kept half)
    2x14x14 -> squeeze -> 8x7x7,   K steps -> latent

each step being act norm -> invertible 1x1 convolution -> affine coupling. A split prior is folded
into the bijection: the factored-out half h becomes eps = (h - mu(kept)) / sigma(kept), whose
log-determinant is -sum log sigma, so every latent is standard normal and the densities, sampling
and interpolation of the flow family apply unchanged.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, TrainConfig, register_model
from genbench.models.realnvp import (
    MNIST_ALPHA,
    ActNorm,
    AffineCoupling,
    RealNVP,
    channel_mask,
    squeeze,
    unsqueeze,
)


@dataclasses.dataclass(frozen=True)
class GlowConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); square
    levels: int = 256  # intensity levels: dequantization (x + u) / levels
    n_levels: int = 2  # each level squeezes once; all but the last factor out half the channels
    n_steps: int = 4  # flow steps (act norm, 1x1 conv, coupling) per level
    hidden_channels: int = 64
    n_blocks: int = 0  # residual blocks in each coupling network (Glow's own net has none)
    alpha: float = MNIST_ALPHA  # logit transform p = alpha + (1 - 2 alpha) y, as RealNVP's
    temperature: float = 1.0  # prior standard deviation used by sample and latent interpolation

    def __post_init__(self) -> None:
        _, size, width = self.image_shape
        if size != width:
            raise ValueError(f"glow needs square images, got image_shape {self.image_shape}")
        if self.n_levels < 1:
            raise ValueError(f"n_levels must be at least 1, got {self.n_levels}")
        if size % 2**self.n_levels != 0:
            raise ValueError(
                f"image size {size} must be divisible by 2**n_levels = {2**self.n_levels}; lower n_levels"
            )
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.n_steps < 1 or self.hidden_channels < 1 or self.n_blocks < 0:
            raise ValueError("n_steps and hidden_channels must be >= 1, n_blocks >= 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class InvConv1x1(nn.Module):
    """y = W x at every pixel, W = P L (U + diag(sign * exp(log_s))), LU-decomposed (Glow, section 3.2):
    P a fixed permutation, L unit lower-triangular, U strictly upper-triangular. log|det W| is
    sum(log_s) exactly, so a step costs O(C) for its log-determinant instead of O(C^3)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation to start from
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        """The (C, C) matrix W."""
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.einsum("ij,bjhw->bihw", self.weight().to(x.dtype), x)  # (B, C, H, W)
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.to(x.dtype).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return torch.einsum("ij,bjhw->bihw", w_inv.to(y.dtype), y)


class SplitPrior(nn.Module):
    """The factored-out half h ~ N(mu, sigma^2) with (mu, log sigma) a zero-initialized 3x3 conv of
    the kept half, folded into the flow as eps = (h - mu) / sigma (log-det -sum log sigma)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _moments(self, keep: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.conv(keep).to(keep.dtype).chunk(2, dim=1)  # (B, C, H, W) each
        return mean, log_std

    def forward(self, keep: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self._moments(keep)
        return (out - mean) * torch.exp(-log_std), -log_std.flatten(1).sum(1)

    def inverse(self, keep: Tensor, eps: Tensor) -> Tensor:
        mean, log_std = self._moments(keep)
        return mean + eps * torch.exp(log_std)


class Level(nn.Module):
    """squeeze, n_steps of (act norm, 1x1 conv, coupling), then (unless final) a split with its prior.
    The interface of realnvp.Scale: forward -> (kept, factored-out latent or None, log-det (B,))."""

    def __init__(self, channels: int, size: int, config: GlowConfig, final: bool) -> None:
        super().__init__()
        self.final = final
        c, s = 4 * channels, size // 2
        layers: list[nn.Module] = []
        for _ in range(config.n_steps):
            coupling = AffineCoupling(channel_mask(c, s, 0), config.hidden_channels, config.n_blocks)
            layers += [ActNorm(c), InvConv1x1(c), coupling]
        self.steps = nn.ModuleList(layers)
        self.prior = None if final else SplitPrior(c // 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        x = squeeze(x)  # (B, 4C, H/2, W/2)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.steps:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.prior is None:
            return x, None, logdet
        keep, out = x.chunk(2, dim=1)  # (B, 2C, H/2, W/2) each
        eps, ld = self.prior(keep, out)
        return keep, eps, logdet + ld

    def inverse(self, keep: Tensor, eps: Tensor | None) -> Tensor:
        x = keep if self.prior is None else torch.cat([keep, self.prior.inverse(keep, eps)], dim=1)
        for layer in reversed(self.steps):
            x = layer.inverse(x)
        return unsqueeze(x)


def _smoke() -> tuple[GlowConfig, TrainConfig]:
    return (
        GlowConfig(n_levels=2, n_steps=2, hidden_channels=8),
        TrainConfig(max_steps=30, batch_size=32, val_images=256, checkpoint_every=10, log_every=5),
    )


def _quick() -> tuple[GlowConfig, TrainConfig]:
    # Sized for 2 CPU cores like RealNVP's quick profile (1000 steps of 32); every coupling runs at
    # 14x14 or 7x7 after the first squeeze, so the steps are cheaper than RealNVP's full-resolution ones.
    return (
        GlowConfig(n_levels=2, n_steps=4, hidden_channels=32, n_blocks=1),
        TrainConfig(epochs=1, batch_size=32, lr=2e-3, max_steps=1000, val_images=1000, checkpoint_every=250),
    )


def _full() -> tuple[GlowConfig, TrainConfig]:
    # Glow's MNIST-scale setting for a GPU: 2 levels of 16 steps, 256-channel coupling networks.
    return (
        GlowConfig(n_levels=2, n_steps=16, hidden_channels=256, n_blocks=1),
        TrainConfig(epochs=100, batch_size=64, lr=1e-3, val_images=5000, checkpoint_every=2000, log_every=50),
    )


@register_model("glow")
class Glow(RealNVP):
    """Glow on the flow family's likelihood protocol (inherited from RealNVP)."""

    Config = GlowConfig
    profiles = {"smoke": _smoke, "quick": _quick, "full": _full}
    # benchmarks/compile_gain.py, quick step of 32 on 2 threads: idle, 57 ms eager, 50 ms compiled
    # (1.14x) and 19 s of compile, paid after ~2,700 steps; on a loaded machine 382 (RealNVP's note).
    cpu_compile_break_even = 2700

    def __init__(self, config: GlowConfig) -> None:
        # RealNVP.__init__ builds RealNVP's own layers; Glow builds its levels, with the same
        # ``scales`` / ``latent_shapes`` interface that RealNVP.flow and flow_inverse walk.
        GenerativeModel.__init__(self, config)
        c, size, _ = config.image_shape
        levels = []
        self.latent_shapes: list[tuple[int, int, int]] = []
        for k in range(config.n_levels):
            final = k == config.n_levels - 1
            levels.append(Level(c, size, config, final))
            c, size = 4 * c, size // 2
            if not final:
                c //= 2
                self.latent_shapes.append((c, size, size))
        self.latent_shapes.append((c, size, size))
        self.scales = nn.ModuleList(levels)
