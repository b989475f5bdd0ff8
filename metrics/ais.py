"""Annealed importance sampling (AIS; Neal 2001) of log p(x) for any model with a decoder p(x | z),
checked by bidirectional Monte Carlo (BDMC; Grosse et al. 2015), as Wu et al. (2017) evaluated GANs
and VAEs.

K chains per image start at prior draws and anneal through p_b(z) ∝ p(z) p(x | z)^b, b rising from
0 to 1 on a sigmoid schedule, one HMC transition (a few leapfrog steps) per intermediate
distribution. Step sizes are adapted per chain toward an acceptance rate of 0.65 in pilot chains, then
fixed for the estimating chains (an adapted step depends on its chain's past and biases the weights:
BDMC's upper bound fell 5 standard errors below the exact pPCA value with it). Each chain's log weight
sum_t (b_t - b_(t-1)) log p(x | z_(t-1)) is an unbiased estimate of p(x) once exponentiated, so
log-mean-exp over the chains is a stochastic lower bound on log p(x) (its negative an upper bound on
the NLL in expectation), tight as the intermediate distributions grow. Run backwards from an exact
posterior sample (the z that generated a simulated image), the same sum estimates 1/p(x) without
bias: a stochastic upper bound on log p(x). The gap between the two bounds on simulated images is how
far the forward estimate can be from the truth at this budget.

Chains of a batch of images run together as (images * K) rows on the device; the loop over
intermediate distributions is the only Python loop. The model is reached only through its decoder
capability (``prior_latents``, ``prior_log_prob``, ``decoder_log_prob``, ``decoder_sample``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from genbench.core.distributed import derive_seed, map_batches
from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalConfig, EvalContext, register_metric
from genbench.metrics.likelihood import IWAE_NLL, NLL, nll_values

AIS_NLL = Output("ais_nats", "AIS NLL", "nats/image", False, "likelihood", 40)
AIS_BPD = Output("ais_bpd", "AIS bits/dim", "bits/dim", False, "likelihood", 41)
# Neither better nor worse for the model: how loose the estimator is at this budget.
BDMC_GAP = Output("bdmc_gap_nats", "BDMC gap", "nats/image", None, "likelihood", 42)
# Bounds on one model's NLL from the loosest to the tightest: the ELBO's, IWAE's (k >= 1 draws from the
# encoder) and AIS's (annealed from the prior). Each is at least the next in expectation, so a
# reversal beyond the noise says an estimator, or its budget, is wrong.
NESTED_BOUNDS = (NLL, IWAE_NLL, AIS_NLL)

SIGMOID_DELTA = 4.0  # the schedule's steepness (Grosse et al. 2015, Wu et al. 2017)
TARGET_ACCEPTANCE = 0.65
ADAPT_RATE = 0.1  # log step size += rate * (acceptance probability - target), per chain and transition
INITIAL_STEP = 0.05
STEP_RANGE = (1e-4, 1.0)
SELECT_STEPS_DIVISOR = 4  # choosing the decoder's noise scale anneals through a quarter of the steps
PILOT_CHAINS = 2  # adaptive chains per image that tune the step sizes of the estimating chains
ROWS_PER_BATCH_FACTOR = 4  # images * chains per batch: this many times the protocol's batch size


@dataclasses.dataclass(frozen=True)
class Path:
    """The annealing problem of a batch of B images: draws from the prior and log p(z), log p(x | z)
    of latents (B * k, ...), k consecutive chains per image, (B * k,) each, differentiable in z."""

    images: int
    sample_prior: Callable[[int], Tensor]
    log_prior: Callable[[Tensor], Tensor]
    log_lik: Callable[[Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class Budget:
    chains: int
    steps: int  # intermediate distributions, T: the schedule has T + 1 values of b, 0 and 1 included
    leapfrog: int

    @classmethod
    def of(cls, config: EvalConfig) -> Budget:
        return cls(config.ais_chains, config.ais_steps, config.ais_leapfrog)


def sigmoid_schedule(steps: int, delta: float = SIGMOID_DELTA) -> Tensor:
    """b_0 = 0 < b_1 < ... < b_T = 1 (T + 1,) float64: sigmoid(delta (2t/T - 1)) rescaled to [0, 1],
    dense near both ends where the distributions change fastest."""
    s = torch.sigmoid(delta * torch.linspace(-1.0, 1.0, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclasses.dataclass(frozen=True)
class _State:
    """Chains at latents z with both log-densities and their gradients in z."""

    z: Tensor
    log_prior: Tensor
    log_lik: Tensor
    grad_prior: Tensor
    grad_lik: Tensor

    def energy(self, beta: float) -> Tensor:
        return -(self.log_prior.double() + beta * self.log_lik.double())  # (N,)

    def grad_energy(self, beta: float) -> Tensor:
        return -(self.grad_prior + beta * self.grad_lik)  # like z

    def where(self, keep_new: Tensor, new: _State) -> _State:
        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(keep_new.view(-1, *[1] * (a.dim() - 1)), b, a)

        return _State(*(pick(getattr(self, f.name), getattr(new, f.name)) for f in dataclasses.fields(self)))


def _evaluate(path: Path, z: Tensor) -> _State:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_prior, log_lik = path.log_prior(z), path.log_lik(z)
        (grad_prior,) = torch.autograd.grad(log_prior.sum(), z)
        (grad_lik,) = torch.autograd.grad(log_lik.sum(), z)
    return _State(z.detach(), log_prior.detach(), log_lik.detach(), grad_prior, grad_lik)


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def hmc_transition(
    path: Path, state: _State, beta: float, step: Tensor, leapfrog: int
) -> tuple[_State, Tensor]:
    """One HMC transition per chain leaving p(z) p(x | z)^beta invariant: ``leapfrog`` steps of size
    ``step`` (N,) from a fresh Gaussian momentum, then a Metropolis-Hastings accept or reject.
    Returns the new state and each chain's acceptance probability (N,)."""
    eps = _per_row(step, state.z)
    momentum = torch.randn_like(state.z)
    p = momentum - 0.5 * eps * state.grad_energy(beta)
    new = state
    for i in range(leapfrog):
        new = _evaluate(path, new.z + eps * p)
        p = p - (eps if i < leapfrog - 1 else 0.5 * eps) * new.grad_energy(beta)
    kinetic = 0.5 * momentum.double().pow(2).flatten(1).sum(1)
    kinetic_new = 0.5 * p.double().pow(2).flatten(1).sum(1)
    log_ratio = state.energy(beta) + kinetic - new.energy(beta) - kinetic_new  # (N,), NaN: reject
    accept_prob = torch.exp(log_ratio.clamp(max=0.0)).nan_to_num(0.0)
    accept = torch.rand_like(accept_prob) < accept_prob
    return state.where(accept, new), accept_prob


def anneal(
    path: Path, z: Tensor, betas: Tensor, leapfrog: int, step_sizes: Tensor | None = None
) -> tuple[Tensor, float, Tensor]:
    """Each chain's AIS log weight (N,) float64 along the schedule ``betas`` from latents z (N, ...)
    (a draw of the first distribution), the mean acceptance probability of its transitions, and the
    step sizes they used (T - 1, N). Increasing betas (0 -> 1) estimate log p(x); decreasing
    (1 -> 0), from posterior draws, -log p(x). ``step_sizes`` (T - 1, N): the step of each transition,
    fixed in advance; None: each chain adapts its own toward the target acceptance (a pilot run: an
    adapted step depends on the chain's own past, which biases the weights)."""
    state = _evaluate(path, z)
    step = torch.full((len(z),), INITIAL_STEP, dtype=torch.float64, device=z.device)
    log_w = torch.zeros(len(z), dtype=torch.float64, device=z.device)
    used, acceptance = [], 0.0
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]).item() * state.log_lik.double()
        if t < len(betas) - 1:  # the last distribution's transition would not change any weight
            step = step if step_sizes is None else step_sizes[t - 1]
            used.append(step)
            state, prob = hmc_transition(path, state, betas[t].item(), step, leapfrog)
            acceptance += float(prob.mean())
            if step_sizes is None:
                step = (step * torch.exp(ADAPT_RATE * (prob - TARGET_ACCEPTANCE))).clamp(*STEP_RANGE)
    steps = torch.stack(used) if used else log_w.new_zeros(0, len(z))
    return log_w, acceptance / max(len(used), 1), steps


def log_mean_exp(log_w: Tensor, chains: int) -> Tensor:
    """(B * K,) log weights, K consecutive chains per image -> (B,) log of their mean."""
    return torch.logsumexp(log_w.view(-1, chains), dim=1) - math.log(chains)


def tune_step_sizes(path: Path, budget: Budget) -> Tensor:
    """Step sizes (T - 1, B) for every transition of every image: the geometric mean over
    PILOT_CHAINS adaptive pilot chains per image. The estimating chains run with them fixed, so
    their kernels do not depend on their own past and the weights stay unbiased."""
    z = path.sample_prior(path.images * PILOT_CHAINS)
    _, _, steps = anneal(path, z, sigmoid_schedule(budget.steps), budget.leapfrog)
    return steps.log().view(len(steps), path.images, PILOT_CHAINS).mean(2).exp()


def ais_log_prob(path: Path, budget: Budget, step_sizes: Tensor) -> tuple[Tensor, float]:
    """Forward AIS from prior draws with the tuned ``step_sizes`` (T - 1, B): log p(x) estimates (B,)
    (a stochastic lower bound) and the mean acceptance probability."""
    z0 = path.sample_prior(path.images * budget.chains)  # (B*K, ...)
    steps = step_sizes.repeat_interleave(budget.chains, dim=1)  # (T-1, B*K)
    log_w, acceptance, _ = anneal(path, z0, sigmoid_schedule(budget.steps), budget.leapfrog, steps)
    return log_mean_exp(log_w, budget.chains), acceptance


def reverse_ais_log_prob(path: Path, z_posterior: Tensor, budget: Budget, step_sizes: Tensor) -> Tensor:
    """Reverse AIS from an exact posterior draw per image (B, ...), K chains each, with the forward
    run's ``step_sizes`` read backwards: log p(x) estimates (B,), a stochastic upper bound (the mean
    of the reverse weights estimates 1/p(x) without bias)."""
    z = z_posterior.repeat_interleave(budget.chains, dim=0)  # (B*K, ...)
    steps = step_sizes.flip(0).repeat_interleave(budget.chains, dim=1)
    log_w, _, _ = anneal(path, z, sigmoid_schedule(budget.steps).flip(0), budget.leapfrog, steps)
    return -log_mean_exp(log_w, budget.chains)


# ---------------------------------------------------------------------------------------------------------
# Through a model's decoder capability


def model_path(model, x: Tensor, noise: float | None) -> Path:
    """The path of images x (B, C, H, W) through the model's prior and decoder."""

    def log_lik(z: Tensor) -> Tensor:
        return model.decoder_log_prob(x.repeat_interleave(len(z) // len(x), dim=0), z, noise)  # (B*k,)

    return Path(len(x), model.prior_latents, model.prior_log_prob, log_lik)


def _over_batches(
    ctx: EvalContext, n: int, budget: Budget, what: str, fn: Callable[[int, int], tuple[Tensor, ...]]
) -> list[Tensor]:
    """fn(start, stop) over batches of n images, each from its own seed (any rank computes any batch
    alike); the results' parts concatenated in float64 on the CPU."""
    per_batch = max(1, ROWS_PER_BATCH_FACTOR * ctx.config.batch_size // budget.chains)

    def batch(index: int, start: int, stop: int) -> tuple[Tensor, ...]:
        torch.manual_seed(derive_seed("ais", what, ctx.seed, index))
        out = tuple(part.double().cpu() for part in fn(start, stop))
        progress.update(stop - start)
        return out

    with ctx.bar(what, n) as progress:
        parts = map_batches(batch, n, per_batch)
    return [torch.cat(p) for p in zip(*parts, strict=True)]


def estimate_log_prob(
    ctx: EvalContext, images: Tensor, budget: Budget, noise: float | None, what: str
) -> tuple[Tensor, float]:
    """Forward AIS log p(x) of each image (float64 CPU (n,)), and the mean acceptance probability."""
    model = ctx.model

    def fn(start: int, stop: int) -> tuple[Tensor, Tensor]:
        path = model_path(model, images[start:stop].to(ctx.device), noise)
        log_p, acceptance = ais_log_prob(path, budget, tune_step_sizes(path, budget))
        return log_p, torch.full((path.images,), acceptance)

    log_p, acceptance = _over_batches(ctx, len(images), budget, what, fn)
    return log_p, float(acceptance.mean())


def bdmc(ctx: EvalContext, n: int, budget: Budget, noise: float | None) -> tuple[Tensor, Tensor]:
    """Forward and reverse AIS log p(x) (float64 CPU (n,) each) on n images drawn from the model,
    the reverse chains starting at the latent that generated each image."""
    model = ctx.model

    def fn(start: int, stop: int) -> tuple[Tensor, Tensor]:
        z_true = model.prior_latents(stop - start)  # (B, Z)
        x = model.decoder_sample(z_true, noise)  # (B, C, H, W) uint8, an exact draw of p(x | z)
        path = model_path(model, x, noise)
        step_sizes = tune_step_sizes(path, budget)
        lower, _ = ais_log_prob(path, budget, step_sizes)
        return lower, reverse_ais_log_prob(path, z_true, budget, step_sizes)

    lower, upper = _over_batches(ctx, n, budget, f"BDMC ({n} simulated images)", fn)
    return lower, upper


def choose_noise(ctx: EvalContext, budget: Budget) -> tuple[float | None, dict]:
    """The decoder's noise scale from its grid that maximizes the mean AIS log p(x) of the first
    ais_select_images validation images (a quarter of the steps), and how it was chosen."""
    grid = ctx.model.decoder_noise_grid()
    if not grid:
        return None, {}
    n = min(ctx.config.ais_select_images, len(ctx.data.val))
    quick = dataclasses.replace(budget, steps=max(1, budget.steps // SELECT_STEPS_DIVISOR))
    scores = {}
    for noise in grid:
        log_p, _ = estimate_log_prob(ctx, ctx.data.val[:n], quick, noise, f"AIS σ={noise} (validation)")
        scores[noise] = float(log_p.mean())
    best = max(grid, key=lambda s: scores[s])
    return best, {
        "sigma": best,
        "sigma_grid": list(grid),
        "sigma_chosen_on": f"the first {n} validation images, {quick.chains} chains, {quick.steps} "
        "intermediate distributions: the σ of highest mean AIS log p(x)",
        "sigma_scores_nats": {str(s): -v for s, v in scores.items()},
    }


def _stderr(values: Tensor) -> float | None:
    return float(values.std() / len(values) ** 0.5) if len(values) > 1 else None


@register_metric("ais", needs=("decoder",), outputs=(AIS_NLL, AIS_BPD, BDMC_GAP))
def ais(ctx: EvalContext) -> dict[str, Value]:
    """AIS NLL on the first ais_images of the test subset, and the BDMC gap on simulated images."""
    config, model = ctx.config, ctx.model
    budget = Budget.of(config)
    noise, chosen = choose_noise(ctx, budget)
    images = ctx.test_images(min(config.ais_images, config.n_test or config.ais_images))
    log_p, acceptance = estimate_log_prob(ctx, images, budget, noise, f"AIS {budget.chains}x{budget.steps}")
    protocol = {
        "chains": budget.chains,
        "intermediate_distributions": budget.steps,
        "schedule": f"sigmoid, delta {SIGMOID_DELTA}",
        "leapfrog_steps": budget.leapfrog,
        "step_size": f"per image and intermediate distribution, tuned by {PILOT_CHAINS} pilot chains "
        f"adapting from {INITIAL_STEP} toward acceptance {TARGET_ACCEPTANCE}",
        "mean_acceptance": acceptance,
        "observation_model": model.decoder_description(noise),
        **chosen,
    }
    estimator = f"AIS, {budget.chains} chains, {budget.steps} intermediate distributions"
    values = nll_values(-log_p, ctx, AIS_NLL, AIS_BPD, "estimate", estimator)
    values = {k: dataclasses.replace(v, protocol={**v.protocol, **protocol}) for k, v in values.items()}
    if config.bdmc_images == 0:
        values[BDMC_GAP.key] = Value(None, na="BDMC not run in this protocol (bdmc_images = 0)")
        return values
    lower, upper = bdmc(ctx, config.bdmc_images, budget, noise)
    gap = upper - lower
    values[BDMC_GAP.key] = Value(
        float(gap.mean()),
        {
            "split": "simulated: z from the prior, x from p(x | z)",
            "n_images": len(gap),
            "forward_log_p_nats": float(lower.mean()),
            "reverse_log_p_nats": float(upper.mean()),
            "seed": ctx.seed,
            **{k: v for k, v in protocol.items() if k != "mean_acceptance"},
        },
        estimator=f"BDMC, reverse minus forward AIS ({budget.chains} chains, {budget.steps} steps)",
        stderr=_stderr(gap),
    )
    return values
