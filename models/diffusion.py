"""Denoising diffusion probabilistic model (Ho et al. 2020) with the improvements that are standard
now: a tuned noise schedule, cosine (Nichol & Dhariwal 2021) or log-SNR-linear (Kingma et al.
2021), eps- or v-prediction (Salimans & Ho 2022), fixed or learned reverse variances (Nichol &
Dhariwal), and a deterministic DDIM sampler (Song et al. 2021) beside the ancestral one.

Pixels x in 0..L-1 (L = levels) are scaled to x0 = 2x/(L-1) - 1 in [-1, 1]. The forward process
adds Gaussian noise over T steps (t = 1..T in the papers; 0-based index t-1 in the code):

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s),
    SNR_t = abar_t / (1 - abar_t)

The network sees x_t (and, with ``grid``, its residual from the pixel grid, see grid_split) and
gives x0_hat(x_t, t) in [-1, 1]; the reverse step p(x_{t-1} | x_t) is the Gaussian with the posterior
mean of q(x_{t-1} | x_t, x0_hat) and a fixed (beta-tilde_t or beta_t) or learned variance.

    eps / v   the network predicts the noise or v = sqrt(abar) eps - sqrt(1 - abar) x0 (with ``grid``
              as a correction to the grid split (g, r), g the posterior mean over the grid points
              near x_t under prior logits the network also gives, see grid_posterior); x0_hat is
              clipped to [-1, 1] (the data lie there, so the clip only moves a prediction toward the
              truth)

The variational bound on log P(x) of the discrete image, in nats (Ho et al. eq. 5):

    log P(x) >= -[ L_T + sum_{t=2..T} L_{t-1} + L_0 ]
    L_T     = KL(q(x_T | x_0) || N(0, I))                       closed form, no network
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     x_t ~ q(x_t | x_0), one draw
    L_0     = -log p(x | x_1): N(mu_theta(x_1), beta_1) integrated over the pixel's bin
              [x0 - 1/(L-1), x0 + 1/(L-1)], the end bins taking the tails (the L masses sum to one)

``log_prob`` estimates it without bias (kind "estimate", since every term but L_T is an
expectation over x_t, drawn once): all T terms per image (bound_t_samples = 0), or L_T, L_0 and the
sum of the T-1 KL terms from k stratified importance draws of t per image. Training minimizes the
simple (reweighted) objective with t uniform (``training_loss``); validation reports the bound
(``loss``).

Network: Ho et al.'s U-Net (models/unet.py); every size comes from the config.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from genbench.models.base import GenerativeModel, TrainConfig, register_model
from genbench.models.gaussians import (
    beta_schedule,
    discretized_gaussian_log_prob,
    likelihood_dtype,
    normal_kl,
)
from genbench.models.unet import UNet

PREDICTIONS = ("eps", "v")
VARIANCES = ("posterior", "beta", "learned")
SCHEDULES = ("cosine", "linear", "loglinear")
PROPOSALS = ("uniform", "snr")
SAMPLERS = ("ddim", "ancestral")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); H, W divisible by patch * 2**(len(mults)-1)
    levels: int = 256
    # --- the process
    timesteps: int = 1000  # T
    schedule: str = "loglinear"  # loglinear (see beta_schedule), cosine (Nichol & Dhariwal), linear (Ho)
    cosine_s: float = 0.008  # offset of the cosine schedule: sets its smallest noise level
    # loglinear: log SNR at t = 1 and t = T. e^13.5: the noise at t = 1 is 1/6.6 of a grid step at
    # 256 levels, so the decoder term is ~1 nat per image; e^-12: L_T ~ 0.002 nats per image
    logsnr_range: tuple[float, float] = (13.5, -12.0)
    prediction: str = "eps"  # eps or v (see the module docstring)
    variance: str = "posterior"  # reverse variance: posterior (beta-tilde), beta, or learned per pixel
    vlb_weight: float = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (learned variance only)
    # --- the network
    patch: int = 1  # the U-Net runs on (C p^2, H/p, W/p): p x p pixel patches folded into channels
    grid: bool = True  # the network also sees x_t's residual from the pixel grid (see grid_split)
    # with grid: the base of the prediction is the posterior mean over the 2w+1 grid points nearest
    # x_t / sqrt(abar), the network giving each a prior logit per pixel (grid_posterior); 0: the nearest
    grid_window: int = 8
    # > 0: a learned prior logit per intensity level, times this, joins the network's. Adam moves a
    # parameter by about lr per step; the scale lets the prior reach the ~5 nats of MNIST's background
    # mass within a hundred steps
    level_prior_scale: float = 20.0
    channels: int = 64  # base width of the U-Net
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width multiplier per resolution; each but the last halves it
    res_blocks: int = 2  # residual blocks per resolution (the decoder side has one more)
    attention_levels: tuple[int, ...] = (2,)  # resolution indices with self-attention (2: H/4, 7x7 on MNIST)
    groups: int = 8  # GroupNorm groups; must divide every width
    dropout: float = 0.0
    # --- likelihood estimator
    bound_t_samples: int = 4  # KL terms drawn per image in log_prob; 0: the exact sum of all T terms
    proposal: str = "snr"  # p(t) of the drawn terms: uniform, or proportional to the log-SNR step
    val_t_samples: int = 1  # the same estimator with this many draws for the validation loss
    # --- sampling
    samplers: tuple[str, ...] = ("ddim",)  # sample modes scored by evaluation, the first the default
    sample_steps: int = 50  # network evaluations per sample of the DDIM sampler
    ddim_eta: float = 0.0  # 0: deterministic DDIM; 1 with sample_steps = T: ancestral with beta-tilde

    def __post_init__(self) -> None:
        _, h, w = self.image_shape
        factor = self.patch * 2 ** (len(self.channel_mults) - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"image height and width must be divisible by {factor} (patch {self.patch}, "
                f"{len(self.channel_mults)} U-Net resolutions), got {self.image_shape}; use fewer "
                "channel_mults"
            )
        for name, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("prediction", self.prediction, PREDICTIONS),
            ("variance", self.variance, VARIANCES),
            ("proposal", self.proposal, PROPOSALS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not self.samplers or any(s not in SAMPLERS for s in self.samplers):
            raise ValueError(f"samplers must be a non-empty tuple of {SAMPLERS}, got {self.samplers}")
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {self.timesteps}")
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(
                f"sample_steps must be in 1..timesteps ({self.timesteps}), got {self.sample_steps}"
            )
        if self.grid_window < 0 or self.level_prior_scale < 0:
            raise ValueError("grid_window and level_prior_scale must be >= 0 (0: without them)")
        if self.bound_t_samples < 0 or self.val_t_samples < 0:
            raise ValueError("bound_t_samples and val_t_samples must be >= 0 (0: the exact sum)")
        if any(not 0 <= i < len(self.channel_mults) for i in self.attention_levels):
            raise ValueError(f"attention_levels must index channel_mults, got {self.attention_levels}")
        if any((self.channels * m) % self.groups for m in (1, *self.channel_mults)):
            raise ValueError(f"groups ({self.groups}) must divide every U-Net width")
        if not self.ddim_eta >= 0:
            raise ValueError(f"ddim_eta must be non-negative, got {self.ddim_eta}")


# --------------------------------------------------------------------------------------------------
# Profiles


def _smoke() -> tuple[DiffusionConfig, TrainConfig]:
    return (
        DiffusionConfig(
            timesteps=100,
            channels=8,
            channel_mults=(1, 2),
            res_blocks=1,
            attention_levels=(1,),
            groups=4,
            bound_t_samples=2,
            sample_steps=5,
        ),  # fmt: skip
        TrainConfig(
            max_steps=30,
            batch_size=32,
            lr=2e-3,
            val_images=256,
            checkpoint_every=10,
            log_every=5,
            ema_decay=0.99,
        ),
    )


def _quick() -> tuple[DiffusionConfig, TrainConfig]:
    return (
        # 2x2 patches (the U-Net runs at 14 and 7): 2.7x the images/s of the full-resolution net, which
        # buys more steps than its resolution costs in the bound within the same two minutes
        DiffusionConfig(
            patch=2, channels=32, channel_mults=(1, 2), res_blocks=1, attention_levels=(1,), sample_steps=20
        ),
        TrainConfig(
            epochs=1,
            max_steps=300,
            batch_size=64,
            lr=4e-3,
            val_images=500,
            checkpoint_every=150,
            warmup_steps=50,
            ema_decay=0.995,
            grad_clip=1.0,
        ),  # fmt: skip
    )


def _full() -> tuple[DiffusionConfig, TrainConfig]:
    # Ho et al.'s CIFAR-10 U-Net (128 channels, two residual blocks per resolution, attention at the
    # 16x16-like resolution, dropout 0.1) on MNIST's three resolutions 28, 14, 7, with learned
    # variances and L_hybrid (Nichol & Dhariwal); Adam 2e-4, warm-up 5000 steps, clip 1, EMA 0.9999.
    return (
        DiffusionConfig(
            channels=128,
            channel_mults=(1, 2, 2),
            res_blocks=2,
            attention_levels=(1, 2),
            groups=32,
            dropout=0.1,
            variance="learned",
            bound_t_samples=0,
            samplers=("ddim", "ancestral"),
            sample_steps=100,
        ),  # fmt: skip
        TrainConfig(
            epochs=150,
            batch_size=128,
            lr=2e-4,
            val_images=1000,
            checkpoint_every=5000,
            log_every=100,
            warmup_steps=5000,
            grad_clip=1.0,
            ema_decay=0.9999,
        ),  # fmt: skip
    )


# --------------------------------------------------------------------------------------------------
# The model


@register_model("diffusion", aliases=("ddpm",))
class Diffusion(GenerativeModel):
    """DDPM with a U-Net denoiser, a variational bound as its likelihood, DDIM and ancestral sampling."""

    likelihood = "estimate"  # every term of the bound is an expectation over x_t, drawn once
    can_interpolate = True
    Config = DiffusionConfig
    profiles = {"smoke": _smoke, "quick": _quick, "full": _full}

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__(config)
        c = config.image_shape[0]
        window = 2 * config.grid_window + 1 if config.grid and config.grid_window else 0
        outputs = c * (1 + window + (config.variance == "learned"))
        self.net = UNet(config, c * (2 if config.grid else 1), outputs)
        if config.grid and config.grid_window and config.level_prior_scale:
            self.level_logits = torch.nn.Parameter(torch.zeros(config.levels))
        T = config.timesteps
        betas = beta_schedule(config.schedule, T, config.cosine_s, config.logsnr_range)
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)  # beta-tilde; 0 at t = 1
        # The schedule is a pure function of the config: buffers that move with the model but are
        # neither saved nor averaged by the loop's EMA.
        constants = {
            "betas": betas,
            "abar": abar,
            "abar_prev": abar_prev,
            "post_var": post_var,
            # log beta-tilde, and log beta ("fixed large"), with beta_1 at t = 1 in both: the decoder's
            # variance. (beta-tilde_1 = 0; Ho et al. put beta-tilde_2 there, which on a log-SNR-linear
            # schedule is ~40x smaller than the noise in x_1, so one pixel off by a grid step costs
            # hundreds of nats.)
            "post_logvar_clipped": torch.log(torch.cat([betas[:1], post_var[1:]])),
            "beta_logvar": torch.log(betas),
            "coef_x0": betas * abar_prev.sqrt() / (1 - abar),  # posterior mean = coef_x0 x0 + coef_xt x_t
            "coef_xt": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
            "proposal": self._proposal(config.proposal, abar),
        }
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)

    @staticmethod
    def _proposal(kind: str, abar: Tensor) -> Tensor:
        """p(t) over the KL terms t = 2..T (index 1..T-1), float64 (T-1,). "snr": half uniform, half
        proportional to the KL terms a unit-variance Gaussian data model would have under a perfect
        denoiser, (SNR_{t-1} - SNR_t) / (1 + SNR_t), which puts the draws where the bound changes fastest
        with log-SNR; the uniform half keeps every importance weight below 2(T-1)."""
        n = len(abar) - 1
        uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
        if kind == "uniform":
            return uniform
        snr = abar / (1 - abar)
        mass = (snr[:-1] - snr[1:]) / (1 + snr[1:])
        return 0.5 * uniform + 0.5 * mass / mass.sum()

    # --- the denoiser ---------------------------------------------------------------------------
    def _at(self, name: str, t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Schedule constant per image at timesteps t (B,) -> (B, 1, 1, 1)."""
        return getattr(self, name)[t].to(dtype).view(-1, 1, 1, 1)

    def _signal_noise(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t) at timesteps t (B,), each (B, 1, 1, 1): x_t = a x0 + s eps."""
        abar = self._at("abar", t)
        return abar.sqrt(), (1 - abar).sqrt()

    def _scale(self, x: Tensor) -> Tensor:
        return x.float() * (2.0 / (self.levels - 1)) - 1.0  # (B, C, H, W) in [-1, 1]

    def grid_split(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_t = sqrt(abar) g + sqrt(1 - abar) r with g the pixel-grid value nearest to
        x_t / sqrt(abar) and r the noise-scaled residual, (B, C, H, W) each.

        The data lie on the grid {-1, -1 + 2/(L-1), ..., 1}: where the noise is small against its
        spacing, (g, r) is exactly (x0, eps), and a network could only read eps off x_t with a gain
        of 1/sigma (hundreds at the first steps), which it learns slowly. So with ``grid`` the network
        sees r as well as x_t and predicts a correction to (g, r) (a wrong grid point, or anything at
        larger noise, where r fades to about 0). It plays the role of VDM's Fourier features (Kingma
        et al. 2021) and turns the high-SNR terms of the bound, which dominate it, from hundreds of
        nats to almost nothing from the first step."""
        a, s = self._signal_noise(t)
        top = self.levels - 1
        g = ((x_t / a + 1) * (top / 2)).round().clamp(0, top) * (2 / top) - 1  # (B, C, H, W)
        return g, (x_t - a * g) / s

    def _network(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's output (B, k C, H, W): the prediction of eps or v (C channels), then the
        variance interpolation (C) when learned."""
        # timesteps scaled to 0..1000 so the embedding frequencies suit any T
        t_in = t.float() * (1000.0 / self.config.timesteps)
        if not self.config.grid:
            return self.net(x_t, t_in).float()
        g, r = self.grid_split(x_t, t)
        out = self.net(torch.cat([x_t, r], 1), t_in).float()  # (B, k C, H, W)
        c = self.image_shape[0]
        a, s = self._signal_noise(t)
        if self.config.grid_window:
            k = 2 * self.config.grid_window + 1
            g = self.grid_posterior(x_t, t, g, out[:, c : c + k * c])
            r = (x_t - a * g) / s
            out = torch.cat([out[:, :c], out[:, c + k * c :]], 1)
        base = r if self.config.prediction == "eps" else a * r - s * g  # eps, or v, of (x0, eps) = (g, r)
        return torch.cat([base + out[:, :c], out[:, c:]], 1)

    def grid_posterior(self, x_t: Tensor, t: Tensor, g: Tensor, logits: Tensor) -> Tensor:
        """The mean (B, C, H, W) of x0 over the 2w+1 grid points around g (those in [-1, 1]) under the
        posterior of the Gaussian likelihood N(x_t; sqrt(abar) x0, 1 - abar) and a prior whose logits
        the network gives per pixel and candidate, ``logits`` (B, (2w+1) C, H, W) candidate-major.

        With zero logits it is the Bayes denoiser of a locally uniform intensity: where the noise is
        a fraction of a grid step it weighs the two points x_t lies between instead of taking the
        nearer, and a learned prior (the background of MNIST is almost always exactly 0) does the
        rest. Wrongly rounded pixels at high SNR are what the bound of 8-bit data pays most for."""
        w, top = self.config.grid_window, self.levels - 1
        step = 2.0 / top
        a, s = self._signal_noise(t)
        offsets = torch.arange(-w, w + 1, device=x_t.device, dtype=x_t.dtype).view(-1, 1, 1, 1, 1)
        level = ((g + 1) / step).round().unsqueeze(0) + offsets  # (K, B, C, H, W)
        values = level * step - 1
        prior = logits.view(len(g), 2 * w + 1, *g.shape[1:]).transpose(0, 1)  # (K, B, C, H, W)
        score = -0.5 * ((x_t - a * values) / s) ** 2 + prior
        if self.config.level_prior_scale:
            score = score + self.config.level_prior_scale * self.level_logits[level.clamp(0, top).long()]
        score = score.masked_fill((level < 0) | (level > top), -math.inf)
        return (torch.softmax(score, 0) * values).sum(0)

    def _predict(self, x_t: Tensor, t: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x0_hat clipped to [-1, 1], the eps consistent with it, the reverse log-variance), each
        broadcastable to (B, C, H, W), from the network output (computed here unless given)."""
        c = self.image_shape[0]
        out = self._network(x_t, t) if out is None else out
        pred = out[:, :c]  # (B, C, H, W)
        a, s = self._signal_noise(t)
        if self.config.prediction == "eps":
            x0 = ((x_t - s * pred) / a).clamp(-1.0, 1.0)
        else:
            x0 = (a * x_t - s * pred).clamp(-1.0, 1.0)
        eps = (x_t - a * x0) / s
        if self.config.variance == "learned":  # Nichol & Dhariwal: interpolate log beta-tilde..log beta
            frac = (out[:, -c:] + 1) / 2  # (B, C, H, W)
            lo, hi = self._at("post_logvar_clipped", t), self._at("beta_logvar", t)
            logvar = frac * hi + (1 - frac) * lo
        elif self.config.variance == "beta":
            logvar = self._at("beta_logvar", t)
        else:
            logvar = self._at("post_logvar_clipped", t)
        return x0, eps, logvar

    # --- the variational bound ------------------------------------------------------------------
    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x0) || N(0, I)) per image (B,), closed form in float64."""
        abar_T = self.abar[-1]
        x0 = x0.to(abar_T.dtype)
        zero = torch.zeros((), dtype=abar_T.dtype, device=abar_T.device)
        kl = normal_kl(abar_T.sqrt() * x0, torch.log1p(-abar_T), zero, zero)  # (B, C, H, W)
        return kl.flatten(1).sum(1)

    def bound_terms(self, x0: Tensor, t: Tensor) -> Tensor:
        """Per image (B,): L_{t} of the bound at 0-based timesteps t (B,), nats: the decoder NLL
        -log p(x | x_1) where t = 0, else KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), x_t ~ q."""
        a, s = self._signal_noise(t)
        x_t = a * x0 + s * torch.randn_like(x0)
        x0_hat, _, logvar = self._predict(x_t, t)
        return self._terms_from(x0, x_t, t, x0_hat, logvar).flatten(1).sum(1)

    def _terms_from(self, x0: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, logvar: Tensor) -> Tensor:
        """Elementwise L_t (B, C, H, W) in the likelihood dtype, given the model's prediction."""
        dt = likelihood_dtype(x0.device)
        x0, x_t, x0_hat, logvar = x0.to(dt), x_t.to(dt), x0_hat.to(dt), logvar.to(dt)
        coef_x0, coef_xt = self._at("coef_x0", t, dt), self._at("coef_xt", t, dt)
        mean = coef_x0 * x0_hat + coef_xt * x_t  # the reverse mean (B, C, H, W)
        logvar = logvar.expand_as(mean)
        decoder = -discretized_gaussian_log_prob(x0, mean, 0.5 * logvar, self.levels)
        # KL of two Gaussians; their means differ by coef_x0 (x0 - x0_hat), taken so nothing cancels
        true_logvar = self._at("post_logvar_clipped", t, dt)  # = log beta-tilde_t for t >= 2
        kl = normal_kl(coef_x0 * x0, true_logvar, coef_x0 * x0_hat, logvar)
        return torch.where((t == 0).view(-1, 1, 1, 1), decoder, kl)

    def draw_timesteps(self, b: int, k: int) -> tuple[Tensor, Tensor]:
        """k stratified draws per image of a KL term t in 1..T-1 (0-based) from the proposal, with
        importance weights 1 / (k p(t)): (k*B,) each. Draw j inverts the proposal's CDF at a u
        uniform on [j/k, (j+1)/k), so for any terms L, E[sum_j w_j L(t_j)] = sum_t L(t) exactly."""
        device = self.proposal.device
        u = (
            torch.arange(k, device=device, dtype=torch.float64)[:, None]
            + torch.rand(k, b, device=device, dtype=torch.float64)
        ) / k  # (k, B)
        cdf = torch.cumsum(self.proposal, 0)
        idx = torch.searchsorted(cdf, u.flatten(), right=True).clamp(max=len(cdf) - 1)  # (k*B,)
        return idx + 1, 1.0 / (k * self.proposal[idx])

    def negative_bound(self, x: Tensor, t_samples: int) -> dict[str, Tensor]:
        """-VLB per image (B,) in nats and its parts. t_samples = 0: all T terms; else L_T and L_0
        exactly and the T-1 KL terms from t_samples stratified draws of t ~ p(t) per image."""
        x0 = self._scale(x)  # (B, C, H, W)
        b, T = len(x0), self.config.timesteps
        prior = self.prior_kl(x0)
        decoder = self.bound_terms(x0, torch.zeros(b, dtype=torch.long, device=x0.device))
        if t_samples == 0:
            diffusion = sum(
                self.bound_terms(x0, torch.full((b,), t, dtype=torch.long, device=x0.device))
                for t in range(1, T)
            )
        else:
            t, weights = self.draw_timesteps(b, t_samples)  # (k*B,) each, draw j of image i at j*B + i
            terms = self.bound_terms(x0.repeat(t_samples, 1, 1, 1), t)  # (k*B,)
            diffusion = (weights.to(terms.dtype) * terms).view(t_samples, b).sum(0)  # (B,)
        total = prior + decoder + diffusion
        return {"nelbo": total, "prior": prior, "decoder": decoder, "diffusion": diffusion}

    # --- training -------------------------------------------------------------------------------
    def _simple(self, x: Tensor) -> dict[str, Tensor]:
        """L_simple: the mean squared error of the predicted eps (or v) at t uniform on 1..T, per
        dimension; with learned variances plus lambda * T * L_t per dimension (L_hybrid), whose
        gradient reaches the variance only."""
        x0 = self._scale(x)
        t = torch.randint(0, self.config.timesteps, (len(x0),), device=x0.device)  # (B,)
        noise = torch.randn_like(x0)
        a, s = self._signal_noise(t)
        x_t = a * x0 + s * noise  # (B, C, H, W)
        out = self._network(x_t, t)  # (B, k C, H, W)
        c = self.image_shape[0]
        target = noise if self.config.prediction == "eps" else a * noise - s * x0
        mse = (out[:, :c] - target).pow(2).mean()
        terms = {"loss": mse, "mse": mse.detach()}
        if self.config.variance == "learned":
            # the bound trains the variances only: the mean sees L_simple alone (Nichol & Dhariwal)
            out = torch.cat([out[:, :c].detach(), out[:, c:]], 1)
            x0_hat, _, logvar = self._predict(x_t, t, out)
            vlb = self._terms_from(x0, x_t, t, x0_hat, logvar).mean().float()  # nats per dim
            terms["loss"] = mse + self.config.vlb_weight * self.config.timesteps * vlb
            terms["vlb_per_dim"] = vlb.detach()
        return terms

    def training_loss(self, x: Tensor, step: int) -> dict[str, Tensor]:
        return self._simple(x)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Validation: "loss" is the negative bound in nats per image (val_t_samples draws of t), so
        the loop's bits/dim is the bound's; the simple objective and the bound's parts are logged."""
        parts = self.negative_bound(x, self.config.val_t_samples)
        out = {"loss": parts["nelbo"].mean().float()}
        out |= {k: v.mean().float() for k, v in parts.items() if k != "nelbo"}
        out["simple"] = self._simple(x)["mse"]
        return out

    # --- likelihood -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """The variational lower bound on log P(x) per image (B,), nats; see likelihood_estimator."""
        return -self.negative_bound(x, self.config.bound_t_samples)["nelbo"]

    def likelihood_estimator(self) -> str:
        T, k = self.config.timesteps, self.config.bound_t_samples
        variance = {"posterior": "fixed beta-tilde", "beta": "fixed beta", "learned": "learned"}[
            self.config.variance
        ]
        if k == 0:
            return (
                f"variational bound, all {T} terms per image, one draw of x_t each (unbiased "
                f"estimate; {variance} reverse variance)"
            )
        proposal = {"uniform": "uniform", "snr": "SNR-weighted"}[self.config.proposal]
        return (
            f"variational bound, prior term exact, decoder term at one draw of x_1 + {k} random t per "
            f"image of the other "
            f"{T - 1} terms ({proposal} stratified importance sampling, unbiased estimate; {variance} "
            "reverse variance)"
        )

    # --- sampling -------------------------------------------------------------------------------
    def sample_modes(self) -> dict[str, str]:
        steps = {"ddim": self.config.sample_steps, "ancestral": self.config.timesteps}
        eta = f" (eta={self.config.ddim_eta:g})" if self.config.ddim_eta else ""
        names = {"ddim": f"DDIM{eta}", "ancestral": "ancestral"}
        return {s: f"{names[s]}, {steps[s]} steps" for s in self.config.samplers}

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=generator, device=self.device)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` 0-based timesteps evenly spaced from T-1 down to 0 (Song et al.'s uniform skip);
        on the log-SNR-linear schedule that is even spacing in log SNR."""
        ts = torch.linspace(self.config.timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        return ts.tolist()

    @torch.no_grad()
    def ddim(self, x: Tensor, steps: int, eta: float, generator: torch.Generator | None = None) -> Tensor:
        """DDIM (Song et al. 2021, eq. 12) from x_T (B, C, H, W) -> x0 in [-1, 1]; eta = 0 is
        deterministic, eta = 1 at every timestep is ancestral sampling with beta-tilde variances."""
        ts = self.ddim_timesteps(steps)
        for i, t in enumerate(ts):
            tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            x0, eps, _ = self._predict(x, tt)
            abar = float(self.abar[t])
            abar_prev = float(self.abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = (
                math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            )  # (B, C, H, W)
            if sigma > 0:
                x = x + sigma * self._noise(x.shape, generator)
        return x

    @torch.no_grad()
    def ancestral(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Ho et al.'s sampler with the model's reverse variance, all T steps: x_T -> mu_theta(x_1)."""
        for t in reversed(range(self.config.timesteps)):
            tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            x0, _, logvar = self._predict(x, tt)
            x = self._at("coef_x0", tt) * x0 + self._at("coef_xt", tt) * x  # (B, C, H, W)
            if t > 0:
                x = x + torch.exp(0.5 * logvar) * self._noise(x.shape, generator)
        return x

    def _to_pixels(self, x0: Tensor) -> Tensor:
        top = self.levels - 1
        return ((x0.float() + 1) / 2 * top).round().clamp(0, top).to(torch.uint8)  # (B, C, H, W)

    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        """n images uint8 (n, C, H, W); mode "ddim" or "ancestral" (None: the first configured)."""
        mode = mode or self.config.samplers[0]
        if mode not in SAMPLERS:
            raise ValueError(f"unknown sample mode {mode!r}; choose from {', '.join(SAMPLERS)}")
        z = self.prior_latents(n, generator)
        if mode == "ancestral":
            return self._to_pixels(self.ancestral(z, generator))
        return self._to_pixels(self.ddim(z, self.config.sample_steps, self.config.ddim_eta, generator))

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._noise((n, *self.image_shape), generator)  # (n, C, H, W): x_T

    def decode_latents(self, z: Tensor) -> Tensor:
        """Deterministic DDIM (eta = 0) from x_T = z: a fixed map, so slerp paths decode smoothly."""
        return self._to_pixels(self.ddim(z, self.config.sample_steps, 0.0))
