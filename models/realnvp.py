"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): a normalizing flow on MNIST, with an exact density
of dequantized images and a Monte-Carlo estimate of the dequantization bound on the discrete one.

The model is a bijection between dequantized images y in [0, 1)^D and latents z ~ N(0, I):

    y = (x + u) / L, u ~ U[0, 1)                uniform dequantization of pixels x (L levels; 256: 8-bit)
    p = alpha + (1 - 2 alpha) y                  keep the logit away from +-infinity
    v = logit(p)                                 unbounded "logit space"
    z = f(v)                                     multi-scale stack of act norms and affine couplings

so that, by the change of variables,

    log p_Y(y) = log N(z; 0, I) + log|det df/dv| + sum_d [log(1 - 2 alpha) - log p_d - log(1 - p_d)]

and the protocol (models/base.py) reports log P(x) >= E_u[log p_Y(y)] - D log L, because a pixel cell
of the L-level grid has volume 1/L per dimension: the dequantization bound (Jensen's inequality),
estimated with one draw of u per image (``log_prob``) or importance-weighted over k draws
(``iwae_log_prob``, tighter as k grows; models.base.iw_dequantized_log_prob).

The logit transform makes p_Y a density on the slightly larger box ((-alpha, 1 - alpha) / (1 - 2 alpha))^D,
so it integrates to a little less than 1 over [0, 1)^D: the reported likelihood is that of a
sub-normalized discrete model and can only be pessimistic, never flattering. The MNIST profiles use
alpha = 1e-6 (see MNIST_ALPHA), where that box is [0, 1]^D up to 2e-6.

Architecture for 1x28x28 with n_scales = 3 (each coupling is preceded by an act norm):

    1x28x28  n_couplings checkerboard couplings -> squeeze -> 4x14x14 n_couplings channel couplings
             -> factor out 2x14x14
    2x14x14  n_couplings checkerboard couplings -> squeeze -> 8x7x7 n_couplings channel couplings
             -> factor out 4x7x7
    4x7x7    n_final_couplings checkerboard couplings

With n_scales = 1 the flow is checkerboard couplings only, which works down to 2x2 images.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from genbench.core.distributed import all_reduce_, is_distributed, world_size
from genbench.models.base import (
    GenerativeModel,
    TrainConfig,
    bits_per_dim,
    iw_dequantized_log_prob,
    register_model,
)

LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class Config:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); square
    levels: int = 256  # intensity levels: dequantization (x + u) / levels
    n_scales: int = 3  # each scale but the last halves the resolution and factors out half the channels
    n_couplings: int = 3  # checkerboard couplings, then channel couplings, per non-final scale
    n_final_couplings: int = 4  # checkerboard couplings of the last scale
    hidden_channels: int = 64
    n_blocks: int = 8  # residual blocks in each coupling network
    alpha: float = 0.05  # logit transform p = alpha + (1 - 2 alpha) y; RealNVP's CIFAR-10 value
    temperature: float = 1.0  # prior standard deviation used by sample and latent_interpolation

    def __post_init__(self) -> None:
        _, size, width = self.image_shape
        if size != width:
            raise ValueError(f"the flow needs square images, got image_shape {self.image_shape}")
        if self.n_scales < 1:
            raise ValueError(f"n_scales must be at least 1, got {self.n_scales}")
        if size % 2 ** (self.n_scales - 1) != 0:
            raise ValueError(
                f"image size {size} must be divisible by 2**(n_scales-1) = "
                f"{2 ** (self.n_scales - 1)}; lower n_scales"
            )
        if size < 2:
            raise ValueError(f"image size must be at least 2 for a checkerboard coupling, got {size}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5) (alpha = 0 gives logit(0) = -inf), got {self.alpha}")
        if (
            self.n_couplings < 1
            or self.n_final_couplings < 1
            or self.hidden_channels < 1
            or self.n_blocks < 0
        ):
            raise ValueError("n_couplings, n_final_couplings and hidden_channels must be >= 1, n_blocks >= 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


# --------------------------------------------------------------------------------------------------
# Invertible layers. Each maps x -> (y, log|det dy/dx| per image) and back with inverse(y) -> x.


def _global_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std of the global batch of a data-parallel run, of which each
    rank holds an equal slice x (B, C, H, W): two all-reduced passes, as a single process computes
    them on the whole batch, so every rank initializes alike."""
    count = x.numel() // x.shape[1] * world_size()  # values per channel in the global batch
    mean = all_reduce_(x.sum(dim=(0, 2, 3), keepdim=True)) / count  # (1, C, 1, 1)
    if count == 1:
        return mean, torch.ones_like(mean)
    squares = all_reduce_((x - mean).pow(2).sum(dim=(0, 2, 3), keepdim=True))  # (1, C, 1, 1)
    return mean, (squares / (count - 1)).sqrt()


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale) (Kingma & Dhariwal 2018).

    Data-dependent init: the first forward in training mode sets loc and log_scale so that the
    batch has zero mean and unit variance per channel. Until then (and in eval mode before any
    training) it is the identity. The ``initialized`` buffer is saved with the state dict, so a
    loaded checkpoint is never re-initialized. In a data-parallel run the statistics are the global
    batch's (all-reduced across ranks)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # host-side cache: avoids a device sync on every step

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._known_initialized = False  # the loaded buffer decides again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        if is_distributed():
            mean, std = _global_moments(x)
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
            std = x.std(dim=(0, 2, 3), keepdim=True) if x.numel() // x.shape[1] > 1 else torch.ones_like(mean)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self._init(x)
            self._known_initialized = True
        y = (x + self.loc) * torch.exp(self.log_scale)  # (B, C, H, W)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class ResNet(nn.Module):
    """Coupling network: 3x3 conv in, n_blocks pre-activation residual blocks, 3x3 conv out.

    The output conv is zero-initialized so that every coupling starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
            )
            for _ in range(n_blocks)
        )
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)  # (B, hidden, H, W)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)  # (B, out, H, W)


def checkerboard_mask(channels: int, size: int, parity: int) -> Tensor:
    """(1, C, H, W) mask of ones where (i + j) % 2 == parity: those positions condition the others."""
    i = torch.arange(size)
    board = ((i[:, None] + i[None, :]) % 2 == parity).float()  # (H, W)
    return board.expand(1, channels, size, size).clone()


def channel_mask(channels: int, size: int, parity: int) -> Tensor:
    """(1, C, H, W) mask of ones on the first (parity 0) or second (parity 1) half of the channels."""
    mask = torch.zeros(1, channels, size, size)
    mask[:, : channels // 2] = 1.0
    return mask if parity == 0 else 1.0 - mask


class AffineCoupling(nn.Module):
    """y = m * x + (1 - m) * (x * exp(s) + t), with (s, t) = NN(m * x, m) and s = scale * tanh(raw).

    The tanh bounds each log-scale by a learned per-channel scale, which keeps early training from
    blowing up; m is a fixed binary mask (checkerboard or channel halves)."""

    def __init__(self, mask: Tensor, hidden: int, n_blocks: int) -> None:
        super().__init__()
        channels = mask.shape[1]
        self.register_buffer("mask", mask, persistent=False)  # (1, C, H, W)
        self.net = ResNet(2 * channels, 2 * channels, hidden, n_blocks)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def _scale_shift(self, x_cond: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.mask.to(x_cond.dtype).expand_as(x_cond)  # (B, C, H, W)
        # Under bf16 autocast the conv outputs are bf16; the flow itself stays in the input's float dtype.
        raw = self.net(torch.cat([x_cond, mask], dim=1)).to(x_cond.dtype)  # (B, 2C, H, W)
        raw_s, t = raw.chunk(2, dim=1)  # (B, C, H, W) each
        inv = 1.0 - self.mask
        return self.scale * torch.tanh(raw_s) * inv, t * inv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x * self.mask)
        y = x * torch.exp(s) + t  # masked positions have s = t = 0, so they pass through unchanged
        return y, s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._scale_shift(y * self.mask)
        return (y - t) * torch.exp(-s)


def squeeze(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2). Channels are ordered so that the first half holds the
    sub-pixels of one checkerboard colour ((0,0), (1,1)) and the second half the other ((0,1), (1,0)).
    The factor-out after the channel couplings then keeps one colour: an evenly subsampled image,
    so every position at the next scale still has its spatial neighbours."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)  # (B, 2, 2, C, H/2, W/2)
    x = x.reshape(b, 4, c, h // 2, w // 2)[:, [0, 3, 1, 2]]  # sub-pixels (0,0), (1,1), (0,1), (1,0)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of squeeze: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    b, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(b, 4, c, h, w)[:, [0, 2, 3, 1]]  # back to sub-pixel order (0,0), (0,1), (1,0), (1,1)
    x = x.reshape(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, H, 2, W, 2)
    return x.reshape(b, c, 2 * h, 2 * w)


class Scale(nn.Module):
    """One resolution of the multi-scale flow: act norm + coupling pairs, then (unless final) squeeze,
    channel couplings, and a factor-out of half the channels straight to the latent."""

    def __init__(self, channels: int, size: int, config: Config, final: bool) -> None:
        super().__init__()
        self.final = final
        n_checker = config.n_final_couplings if final else config.n_couplings
        layers: list[nn.Module] = []
        for k in range(n_checker):
            layers += [ActNorm(channels), self._coupling(checkerboard_mask(channels, size, k % 2), config)]
        self.pre = nn.ModuleList(layers)
        layers = []
        if not final:
            for k in range(config.n_couplings):
                mask = channel_mask(4 * channels, size // 2, k % 2)
                layers += [ActNorm(4 * channels), self._coupling(mask, config)]
        self.post = nn.ModuleList(layers)

    @staticmethod
    def _coupling(mask: Tensor, config: Config) -> AffineCoupling:
        return AffineCoupling(mask, config.hidden_channels, config.n_blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """-> (the part that continues, the factored-out part or None, log-det (B,))."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.pre:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.final:
            return x, None, logdet
        x = squeeze(x)  # (B, 4C, H/2, W/2)
        for layer in self.post:
            x, ld = layer(x)
            logdet = logdet + ld
        out, keep = x.chunk(2, dim=1)  # (B, 2C, H/2, W/2) each
        return keep, out, logdet

    def inverse(self, keep: Tensor, out: Tensor | None) -> Tensor:
        x = keep
        if not self.final:
            x = torch.cat([out, keep], dim=1)
            for layer in reversed(self.post):
                x = layer.inverse(x)
            x = unsqueeze(x)
        for layer in reversed(self.pre):
            x = layer.inverse(x)
        return x


# --------------------------------------------------------------------------------------------------
# Profiles


# MNIST is mostly exact zeros: with alpha = 0.05 their dequantized values form a box only 0.07 wide
# in logit space, which a small flow fits slowly (the quick net, 1400 steps of 32: 1.59 test bits/dim
# with alpha = 0.05 against 1.40 with 1e-6, same schedule). MAF (Papamakarios et al. 2017), whose
# MNIST table holds RealNVP's 1.06, used 1e-6 for MNIST; the 0.05 default is RealNVP's CIFAR-10 value.
MNIST_ALPHA = 1e-6


def _smoke() -> tuple[Config, TrainConfig]:
    return (
        Config(
            n_scales=2, n_couplings=2, n_final_couplings=2, hidden_channels=8, n_blocks=1, alpha=MNIST_ALPHA
        ),
        TrainConfig(max_steps=30, batch_size=32, val_images=256, checkpoint_every=10, log_every=5),
    )


def _quick() -> tuple[Config, TrainConfig]:
    # Sized for 2 CPU cores: about 0.2 s of one core per step. Full-resolution couplings dominate the
    # cost, so the quick net is narrow and shallow; small batches with more steps learned faster per
    # CPU-second than batch 64, and lr 2e-3 beat both 1e-3 and 5e-3.
    return (
        Config(
            n_scales=3, n_couplings=2, n_final_couplings=2, hidden_channels=32, n_blocks=1, alpha=MNIST_ALPHA
        ),
        TrainConfig(epochs=1, batch_size=32, lr=2e-3, max_steps=1000, val_images=1000, checkpoint_every=250),
    )


def _full() -> tuple[Config, TrainConfig]:
    # RealNVP's multi-scale layout (3 checkerboard + 3 channel couplings per scale, 4 at the last) with
    # 64-channel 8-block residual nets and the paper's L2 penalty of 5e-5; about 9.6M parameters.
    return (
        Config(
            n_scales=3,
            n_couplings=3,
            n_final_couplings=4,
            hidden_channels=64,
            n_blocks=8,
            alpha=MNIST_ALPHA,
        ),
        TrainConfig(
            epochs=100,
            batch_size=64,
            lr=1e-3,
            val_images=5000,
            checkpoint_every=2000,
            log_every=50,
            weight_decay=5e-5,
        ),
    )


# --------------------------------------------------------------------------------------------------
# The model


@register_model("flow", aliases=("realnvp",))
class RealNVP(GenerativeModel):
    """Multi-scale RealNVP with act norm and residual coupling networks; an exact density of the
    dequantized image, so a Monte-Carlo estimate of a bound on the discrete image's likelihood."""

    likelihood = "estimate"
    importance_weighted = True
    can_reconstruct = True
    invertible = True
    can_interpolate = True
    # benchmarks/compile_gain.py, quick step of 32 on 2 threads: idle, 125 ms eager, 99 ms compiled
    # (1.26x) and 31 s of compile, paid after ~1,200 steps (the quick run's 1000 do not pay); on a
    # loaded machine 72 steps (12.1 s eager, 6.5 compiled, 401 s of compile). The idle one is taken,
    # so that the default never costs time.
    cpu_compile_break_even = 1200
    Config = Config
    profiles = {"smoke": _smoke, "quick": _quick, "full": _full}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c, size, _ = config.image_shape
        scales = []
        # Shapes of the latent pieces in the order forward concatenates them (factored-out parts, then final).
        self.latent_shapes: list[tuple[int, int, int]] = []
        for k in range(config.n_scales):
            final = k == config.n_scales - 1
            scales.append(Scale(c, size, config, final))
            if not final:
                c, size = 2 * c, size // 2
                self.latent_shapes.append((c, size, size))
        self.latent_shapes.append((c, size, size))
        self.scales = nn.ModuleList(scales)

    # ---- the bijection --------------------------------------------------------------------------

    def logit(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y in [0, 1)^D -> v = logit(alpha + (1 - 2 alpha) y), and log|det dv/dy| per image (B,)."""
        alpha = self.config.alpha
        p = alpha + (1.0 - 2.0 * alpha) * y  # (B, C, H, W)
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        v = log_p - log_1mp
        logdet = (math.log(1.0 - 2.0 * alpha) - log_p - log_1mp).flatten(1).sum(1)
        return v, logdet

    def inverse_logit(self, v: Tensor) -> Tensor:
        alpha = self.config.alpha
        return (torch.sigmoid(v) - alpha) / (1.0 - 2.0 * alpha)

    def flow(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Logit-space image v (B, C, H, W) -> flat latent z (B, D) and log|det dz/dv| (B,)."""
        logdet = v.new_zeros(v.shape[0])
        pieces = []
        h = v
        for scale in self.scales:
            h, out, ld = scale(h)
            logdet = logdet + ld
            if out is not None:
                pieces.append(out.flatten(1))
        pieces.append(h.flatten(1))
        return torch.cat(pieces, dim=1), logdet  # (B, D), (B,)

    def flow_inverse(self, z: Tensor) -> Tensor:
        """Flat latent z (B, D) -> logit-space image v (B, C, H, W)."""
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        pieces = [
            p.reshape(-1, *shape) for p, shape in zip(z.split(sizes, dim=1), self.latent_shapes, strict=True)
        ]
        h = pieces[-1]
        outs = pieces[:-1] + [None]
        for scale, out in zip(reversed(self.scales), reversed(outs), strict=True):
            h = scale.inverse(h, out)
        return h

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Dequantized image y (B, C, H, W) in [0, 1) -> latent z (B, D) and log|det dz/dy| (B,),
        the logit transform's log-Jacobian included."""
        v, ld_logit = self.logit(y)
        z, ld_flow = self.flow(v)
        return z, ld_logit + ld_flow

    def inverse(self, z: Tensor) -> Tensor:
        """Latent z (B, D) -> y (B, C, H, W); not clamped, so it exactly inverts ``forward``."""
        return self.inverse_logit(self.flow_inverse(z))

    def log_density(self, y: Tensor) -> Tensor:
        """log p_Y(y) in nats per image (B,): the continuous density of y, change of variables included."""
        z, logdet = self(y)
        z, logdet = z.float(), logdet.float()
        log_base = -0.5 * (z.pow(2) + LOG_2PI).sum(1)  # (B,) standard normal
        return log_base + logdet

    # ---- GenerativeModel -------------------------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """Nats per image: log p_Y(y) - D log L with y = (x + u) / L, L = levels, one dequantization
        draw u ~ U[0, 1)^D per image, the standard estimator (as in the RealNVP and Glow papers). By
        Jensen's inequality its expectation is a lower bound on the log probability of the discrete
        image, so averages over a test set are unbiased estimates of that bound, not the NLL."""
        return iw_dequantized_log_prob(self.log_density, x, self.levels, 1)

    def likelihood_estimator(self) -> str:
        return "dequantization bound: exact density of x + u, one uniform draw u per image"

    def iwae_log_prob(self, x: Tensor, k: int) -> Tensor:
        """The importance-weighted dequantization bound with k draws of u per image (tighter than
        ``log_prob``'s one draw; an upper bound on the NLL in expectation for every k)."""
        return iw_dequantized_log_prob(self.log_density, x, self.levels, k)

    def iwae_estimator(self, k: int) -> str:
        return f"importance-weighted dequantization bound, k={k} uniform draws per image"

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        nll = -self.log_prob(x).mean()
        return {"loss": nll, "bpd": bits_per_dim(nll, self.dims)}

    def compile_step(self, **options) -> None:
        """One graph for the training objective. The act norms' data-dependent initialization reads
        a flag on the host, so the first step runs eagerly and every later one compiled."""
        eager, compiled = self.training_loss, torch.compile(self.training_loss, **options)
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]

        def training_loss(x: Tensor, step: int) -> dict[str, Tensor]:
            ready = all(norm._known_initialized for norm in norms)
            return compiled(x, step) if ready else eager(x, step)

        self.training_loss = training_loss

    def decode_latents(self, z: Tensor) -> Tensor:
        """Latents (B, D) -> uint8 images (B, C, H, W): floor(y * levels), clamped to 0..levels-1."""
        y = self.inverse(z)
        return torch.floor(y.float() * self.levels).clamp(0, self.levels - 1).to(torch.uint8)

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dims, generator=generator, device=self.device)  # (n, D)
        return z * self.config.temperature

    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        """z ~ N(0, temperature^2 I), inverted through the flow and the logit transform."""
        return self.decode_latents(self.prior_latents(n, generator))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Forward then inverse of the deterministic pixel centres y = (x + 0.5) / levels.

        Returns the recovered y in [0, 1]: equal to the input up to float error, so against x / 255
        it carries the quantization-offset floor of at most 0.5/256 per pixel (MSE ~ 4e-6)."""
        y = (x.float() + 0.5) / self.levels  # (B, C, H, W)
        z, _ = self(y)
        return self.inverse(z).float().clamp(0.0, 1.0)
