"""The noise schedules of the diffusion family and the Gaussian pieces of its variational bound:
the KL of two Gaussians and the discretized Gaussian decoder, each exact in float64 where the device
has it. models/diffusion.py owns the process, the network's use of them and the likelihood."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def beta_schedule(
    kind: str,
    timesteps: int,
    cosine_s: float = 0.008,
    logsnr_range: tuple[float, float] = (13.5, -12.0),
) -> Tensor:
    """beta_1..beta_T in float64 (T,).

    loglinear: log SNR_t = log(abar_t / (1 - abar_t)) falls linearly from logsnr_range[0] at t = 1 to
    logsnr_range[1] at t = T (the continuous-time schedule of VDM, Kingma et al. 2021). Uniform t then
    spends equal training on every octave of noise, and the eps-MSE weighted uniformly in t is the
    bound's own weighting (each KL term is ~ 1/2 dlogSNR ||eps - eps_hat||^2), so L_simple trains
    what the likelihood measures. The cosine schedule instead spends few steps at the high-SNR end,
    where the bound of 8-bit data is decided.
    """
    if kind == "loglinear":
        abar = torch.sigmoid(torch.linspace(*logsnr_range, timesteps, dtype=torch.float64))
        return 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    if kind == "linear":  # Ho et al.'s 1e-4..0.02 at T = 1000, stretched to keep the same total noise
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    # cosine: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2); beta capped at 0.999 so
    # the last step stays finite (abar_T = 0 exactly would make x_T carry no scale at all)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    d = logvar2 - logvar1
    return 0.5 * (torch.expm1(-d) + d + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(-a)) for a > 0, stable on both sides of ln 2 (Maechler 2012)."""
    return torch.where(a < math.log(2), torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))


def discretized_gaussian_log_prob(x0: Tensor, mean: Tensor, log_std: Tensor, levels: int) -> Tensor:
    """Elementwise log P(x0) for x0 on the grid {-1, -1 + 2/(L-1), ..., 1} under N(mean, std^2)
    integrated over the bin [x0 - 1/(L-1), x0 + 1/(L-1)]; the end bins take the tails, so the L masses
    sum to one. Each mass is a difference of normal CDFs, taken in log space on the side of the mean
    where it does not cancel: log Phi(b) + log(1 - Phi(a)/Phi(b)) below the mean, the same with the
    survival function above it. Call it in float64 for a bin-exact result."""
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_std)
    upper = (x0 + half - mean) * inv_std
    lower = (x0 - half - mean) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(y < upper): the bottom bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(y > lower): the top bin
    below = lower + upper < 0  # bin centre below the mean: both CDFs are small, use them
    log_big = torch.where(below, log_cdf_upper, log_sf_lower)
    log_small = torch.where(below, torch.special.log_ndtr(lower), torch.special.log_ndtr(-upper))
    gap = (log_big - log_small).clamp_min(1e-300 if x0.dtype == torch.float64 else 1e-38)
    log_mid = log_big + _log1mexp(gap)
    return torch.where(x0 < -1 + half, log_cdf_upper, torch.where(x0 > 1 - half, log_sf_lower, log_mid))


def likelihood_dtype(device: torch.device) -> torch.dtype:
    """float64 for the per-pixel likelihood arithmetic wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64
