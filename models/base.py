"""The one interface every model family implements, its typed profiles, and the model registry.

Conventions shared by every family (the loop and the metrics rely on them):

* Images enter every method as uint8 tensors ``(B, C, H, W)`` with integer values
  0..levels-1 (``levels`` = 256 for 8-bit data, 2 for binarized MNIST) on the model's device. The
  model owns its own preprocessing (dequantization, scaling, logit transform).
* ``log_prob`` is in nats per image: the log-probability of the discrete image over ``levels``
  values per pixel, which equals the log-density of uniformly dequantized data ``(x + u) / levels``
  on [0, 1)^D for a continuous model. ``bits_per_dim`` converts it with D = C * H * W. Likelihood
  terms are computed in float32 even when the loop trains under bf16 autocast.
* ``sample`` returns uint8 ``(n, C, H, W)`` in 0..levels-1; ``reconstruct`` returns floats in [0, 1].
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from genbench.core.schema import KINDS

Likelihood = Literal["exact", "bound", "estimate"] | None  # core.schema.KINDS, or None
PROFILE_NAMES = ("smoke", "quick", "full")
# Validation points a profile asks of every family's run at least (TrainConfig.validations), so its
# validation curves have a shape; the quick profile's are cheap next to its training.
PROFILE_VALIDATIONS = {"smoke": 1, "quick": 5, "full": 5}


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training schedule of a profile: the loop owns all of it (optimizers, schedule, clipping,
    EMA), so no model re-implements its own step for them. CLI options override single fields."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    max_steps: int | None = None  # stop early (smoke profiles); None runs all epochs
    val_images: int = 5000  # validation subset evaluated at each epoch end
    # Validations spread evenly over the run's steps (beside each epoch end's): 1 is the epoch ends only.
    validations: int = 1
    checkpoint_every: int = 500  # steps between checkpoints (one is also written at each epoch end)
    log_every: int = 20  # steps between host syncs: history rows, progress bar, finiteness check
    optimizer: str = "adam"  # one per parameter group of the model (the GAN has two)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # Adam: L2 penalty in the gradient; AdamW: decoupled
    grad_clip: float | None = None  # max gradient norm per optimizer step; None: no clipping
    schedule: str = "constant"  # learning rate after warm-up: constant, or cosine decay to 0 at the end
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    ema_decay: float | None = None  # exponential moving average of the weights, used to evaluate
    # Stop training at the first step boundary past this many seconds of the loop's wall time; the
    # steps it reached are recorded, and --max-steps of them repeats it. Epochs and max_steps do not cap it.
    time_budget_s: float | None = None
    # Train the steps whose counted FLOPs reach this budget, ceil(budget / FLOPs per step) (the loop
    # counts a step at run start: bench.engine.budget); that decides the steps, whatever epochs and
    # max_steps say.
    # An increasing tuple is a compute ladder: training runs to the last rung and the model is
    # evaluated at each (bench.engine.ladder).
    compute_budget: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_images", "validations", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {self.warmup_steps}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.time_budget_s is not None and not (
            math.isfinite(self.time_budget_s) and self.time_budget_s > 0
        ):
            raise ValueError(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s}")
        rungs = self.compute_rungs
        if not all(isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in rungs):
            raise ValueError(f"compute_budget must be a positive number of FLOPs, got {self.compute_budget}")
        if any(a >= b for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError(f"a compute ladder must increase, got {self.compute_budget}")
        if self.compute_budget is not None and self.time_budget_s is not None:
            raise ValueError("a run has one budget: give compute_budget (FLOPs) or time_budget_s, not both")
        if self.time_budget_s is not None and self.schedule == "cosine":
            # The decay is a function of the planned last step, which a budget cuts short: the same
            # steps run with --max-steps would decay to 0 at another step, and not repeat the run.
            raise ValueError("a time budget cannot end a cosine learning-rate schedule; use a constant one")

    @property
    def compute_rungs(self) -> tuple[float, ...]:
        """The compute budget's rungs in FLOPs: one for a single budget, none without one."""
        if self.compute_budget is None:
            return ()
        budget = self.compute_budget
        return tuple(budget) if isinstance(budget, tuple) else (budget,)


# A profile is a factory so that every call returns fresh, independent configs.
Profile = Callable[[], tuple[object, TrainConfig]]


def dequantize(x: Tensor, levels: int = 256) -> Tensor:
    """Uniform dequantization of integer pixels 0..levels-1: (x + u) / levels, u ~ U[0, 1)."""
    return (x.float() + torch.rand_like(x, dtype=torch.float32)) / levels


def iw_dequantized_log_prob(
    log_density: Callable[[Tensor], Tensor], x: Tensor, levels: int, k: int, chunk: int = 256
) -> Tensor:
    """The importance-weighted dequantization estimate of log P(x) per image (B,), nats, for a
    density ``log_density`` (nats per image) of dequantized images y in [0, 1)^D:

        log P(x) = log E_u[p_Y((x + u) / L) / L^D] >= E_u[log (1/k) sum_j p_Y((x + u_j) / L)] - D log L

    with u_j ~ U[0, 1)^D independent: P(x) is the mass p_Y puts on the pixel cell of x (volume
    L^-D), u is the proposal (uniform over the cell), so this is IWAE with the dequantization as
    its posterior (Ho et al. 2019, Flow++, sec. 3.1). k = 1 is the usual one-draw estimate; the
    bound tightens as k grows and reaches log P(x) as k -> infinity. Draws are evaluated at most
    ``chunk`` images at a time."""
    per_call = max(1, chunk // len(x))
    log_p = []
    for start in range(0, k, per_call):
        m = min(per_call, k - start)
        y = dequantize(x.repeat(m, *([1] * (x.dim() - 1))), levels)  # (m*B, C, H, W), draw j at j*B + i
        log_p.append(log_density(y).view(m, len(x)))  # (m, B)
    dims = math.prod(x.shape[1:])
    return torch.logsumexp(torch.cat(log_p), 0) - math.log(k) - dims * math.log(levels)  # (B,)


def to_unit(x: Tensor, levels: int = 256) -> Tensor:
    """Integer pixels 0..levels-1 -> float [0, 1]."""
    return x.float() / (levels - 1)


def to_uint8(x: Tensor, levels: int = 256) -> Tensor:
    """float [0, 1] -> integer pixels 0..levels-1 as uint8 (rounded, clamped)."""
    return (x.float().clamp(0.0, 1.0) * (levels - 1)).round().to(torch.uint8)


def bits_per_dim(nats_per_image: Tensor | float, dims: int) -> Tensor | float:
    """bpd = nats / (D ln 2); D = C * H * W (784 for MNIST)."""
    return nats_per_image / (dims * math.log(2.0))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) of each row of z (N, Z) -> (N,)."""
    return -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows of z0 and z1 (P, D) at fractions t (S,) -> (P, S, D).

    Gaussian latents concentrate near a sphere of radius sqrt(D); the straight line between two of
    them dips toward the origin (atypical, blurry decodes), the great circle does not. Nearly
    parallel endpoints fall back to the straight line, whose formula is stable there."""
    cos = ((z0 * z1).sum(1) / (z0.norm(dim=1) * z1.norm(dim=1)).clamp_min(1e-12)).clamp(-1.0, 1.0)  # (P,)
    omega = torch.acos(cos)[:, None]  # (P, 1)
    sin = torch.sin(omega)
    t = t[None, :]  # (1, S)
    linear = sin.abs() < 1e-6
    safe_sin = torch.where(linear, torch.ones_like(sin), sin)
    w0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * omega) / safe_sin)  # (P, S)
    w1 = torch.where(linear, t, torch.sin(t * omega) / safe_sin)  # (P, S)
    return w0[..., None] * z0[:, None] + w1[..., None] * z1[:, None]  # (P, S, D)


class Optimization(Protocol):
    """What ``train_step`` receives from the loop: ``step(group, loss)`` zeroes that group's
    gradients, back-propagates ``loss``, clips and steps its optimizer, all by the run's
    TrainConfig. A model with one parameter group calls it once per training step."""

    def step(self, group: str, loss: Tensor) -> None: ...


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of every family. Subclasses set the class attributes and implement the math.

    Capabilities (validated at registration; metrics and the report read them, never the class):

    * ``likelihood``: what ``log_prob``'s numbers are, one of ``core.schema.KINDS``: "exact"
      (PixelCNN: a normalized distribution over the levels), "bound" (a bound computed
      deterministically), "estimate" (a Monte-Carlo estimate of a bound: the VAE's one-draw ELBO,
      the flow's dequantization draw, diffusion's sampled terms) or None (GAN); ``log_prob`` is
      required unless None.
    * ``importance_weighted``: ``iwae_log_prob(x, k)`` exists (the VAE).
    * ``can_reconstruct``: ``reconstruct(x)`` exists.
    * ``can_interpolate``: ``prior_latents`` and ``decode_latents`` exist, so ``interpolate``
      draws spherical paths between prior latents.
    * ``has_decoder``: a latent-variable model p(x) = ∫ p(z) p(x | z) dz whose parts can be
      evaluated: ``prior_latents``, ``prior_log_prob``, ``decoder_log_prob``, ``decoder_sample``
      (and ``decoder_noise_grid``/``decoder_description`` where the decoder has a free noise
      scale). Annealed importance sampling (metrics/ais.py) estimates log p(x) through them.

    The config is a frozen dataclass with ``image_shape`` (C, H, W) and ``levels`` (intensity
    levels per pixel; 256 for 8-bit data): the single source of D for bits/dim everywhere.
    """

    name: ClassVar[str] = ""
    likelihood: ClassVar[Likelihood] = None
    importance_weighted: ClassVar[bool] = False
    can_reconstruct: ClassVar[bool] = False
    # reconstruct() inverts a bijection: its reconstruction error is zero by construction, not a finding
    invertible: ClassVar[bool] = False
    can_interpolate: ClassVar[bool] = False
    has_decoder: ClassVar[bool] = False
    # CPU training steps after which torch.compile has paid for its compile time (measured on the quick
    # step, benchmarks/compile_gain.py); None: it does not pay on the CPU. bench.engine.device.compile_choice
    # turns --compile on by default for a CPU run with at least twice this many steps.
    cpu_compile_break_even: ClassVar[int | None] = None
    Config: ClassVar[type]
    profiles: ClassVar[dict[str, Profile]]

    def __init__(self, config) -> None:
        super().__init__()
        check_image_spec(config)
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.image_shape)

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def dims(self) -> int:
        """D, the number of pixel values per image: C * H * W."""
        return math.prod(self.image_shape)

    # --- training -------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimizer; the loop builds one optimizer per group from the TrainConfig."""
        return {"main": list(self.parameters())}

    @abc.abstractmethod
    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """The objective on a batch, as validation reports it. Must hold "loss" (a scalar; for a
        likelihood model the NLL or negative bound in nats per image); other terms are logged."""

    def training_loss(self, x: Tensor, step: int) -> dict[str, Tensor]:
        """The training objective at loop step ``step`` (0-based, the steps done before this one);
        a schedule inside the objective (KL warm-up) reads the step here, never a hidden counter."""
        return self.loss(x)

    def train_step(self, x: Tensor, optim: Optimization, step: int) -> dict[str, Tensor]:
        """One optimisation step. Returns detached scalars; the loop never calls .item() per step."""
        terms = self.training_loss(x, step)
        optim.step("main", terms["loss"])
        return {k: v.detach() for k, v in terms.items()}

    def compile_step(self, **options) -> None:
        """torch.compile what ``train_step`` calls, once, in place (``bench run --compile``): the
        training objective as one graph by default. A family whose train_step calls other pieces
        (the GAN's two players) compiles those instead. Validation and evaluation stay eager."""
        self.training_loss = torch.compile(self.training_loss, **options)

    # --- sampling -------------------------------------------------------------------------------
    def sample_modes(self) -> dict[str, str]:
        """How this model draws samples: mode -> description (shown beside its sample-quality
        numbers; "" for none). The first is the default; evaluation scores every mode listed."""
        return {"default": ""}

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        """n samples as uint8 (n, C, H, W) with values 0..levels-1; ``mode`` one of sample_modes()
        (None: the default). ``generator`` lives on the model's device."""

    # --- likelihood -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Per-image log-likelihood in nats of the discrete image (a lower bound for "bound")."""
        raise NotImplementedError(f"{self.name} has no likelihood")

    def likelihood_estimator(self) -> str:
        """How ``log_prob`` is computed, for the protocol (e.g. "ELBO, one posterior sample")."""
        return {"exact": "exact", "bound": "variational bound"}.get(self.likelihood, "Monte-Carlo estimate")

    def likelihood_kind(self) -> str | None:
        """What this instance's ``log_prob`` numbers are (``core.schema.KINDS``): the declared
        likelihood unless the config changes it."""
        return self.likelihood

    def iwae_log_prob(self, x: Tensor, k: int) -> Tensor:
        """Importance-weighted estimate with k samples; required when importance_weighted."""
        raise NotImplementedError(f"{self.name} has no importance-weighted estimate")

    def iwae_estimator(self, k: int) -> str:
        """How ``iwae_log_prob`` is computed, for the protocol."""
        return f"IWAE, k={k}"

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction of a batch as floats in [0, 1] (pixel / (levels - 1))."""
        raise NotImplementedError(f"{self.name} cannot reconstruct")

    # --- latent interpolation -------------------------------------------------------------------
    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n latents (n, ...) drawn from the prior; required when can_interpolate."""
        raise NotImplementedError(f"{self.name} has no latent space to interpolate")

    def decode_latents(self, z: Tensor) -> Tensor:
        """Latents (n, ...) -> uint8 images (n, C, H, W); required when can_interpolate."""
        raise NotImplementedError(f"{self.name} has no latent space to interpolate")

    def interpolate(self, n_pairs: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Spherical interpolation between pairs of prior latents: uint8 (n_pairs, steps, C, H, W)."""
        if steps < 2:
            raise ValueError(f"steps must be at least 2 (both endpoints), got {steps}")
        z0, z1 = self.prior_latents(n_pairs, generator), self.prior_latents(n_pairs, generator)
        t = torch.linspace(0.0, 1.0, steps, device=z0.device)  # (S,)
        z = slerp(z0.flatten(1), z1.flatten(1), t).reshape(n_pairs * steps, *z0.shape[1:])  # (P*S, ...)
        images = self.decode_latents(z)  # (P*S, C, H, W)
        return images.reshape(n_pairs, steps, *images.shape[1:])

    # --- the decoder p(x | z) of a latent-variable model (has_decoder) ---------------------------
    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per latent (N, ...) -> (N,), differentiable in z; required when has_decoder."""
        raise NotImplementedError(f"{self.name} has no latent decoder")

    def decoder_log_prob(self, x: Tensor, z: Tensor, noise: float | None = None) -> Tensor:
        """log p(x | z) in nats per image of the discrete image x (N, C, H, W) given latents z (N, ...),
        differentiable in z; ``noise`` is one of ``decoder_noise_grid()`` where that is not empty.
        Required when has_decoder."""
        raise NotImplementedError(f"{self.name} has no latent decoder")

    def decoder_sample(
        self, z: Tensor, noise: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """An exact draw x ~ p(x | z) as uint8 (N, C, H, W); required when has_decoder."""
        raise NotImplementedError(f"{self.name} has no latent decoder")

    def decoder_noise_grid(self) -> tuple[float, ...]:
        """The values of the decoder's free noise scale to choose from on validation images (a GAN's
        σ); empty when the decoder has none (it was trained with its own)."""
        return ()

    def decoder_description(self, noise: float | None = None) -> str:
        """What p(x | z) is, for the protocol of the numbers computed through it."""
        return "the model's own decoder"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_image_spec(config) -> None:
    """A family's config must say its image shape (C, H, W) and its intensity levels."""
    shape = getattr(config, "image_shape", None)
    if not (
        isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise ValueError(
            f"{type(config).__name__}.image_shape must be (C, H, W) positive ints, got {shape!r}"
        )
    levels = getattr(config, "levels", None)
    if not (isinstance(levels, int) and 2 <= levels <= 256):
        raise ValueError(f"{type(config).__name__}.levels must be an int in 2..256, got {levels!r}")


MODELS: dict[str, type[GenerativeModel]] = {}
ALIASES: dict[str, str] = {}
# Where each registered family comes from: "built-in", "entry point <distribution>" or "module:Class".
ORIGINS: dict[str, str] = {}
# Names end up in run ids (folder names) and in comma-separated --models lists.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def register_model(name: str, aliases: tuple[str, ...] = (), origin: str | None = None):
    """Class decorator: validate a family and add it to the registry under ``name`` (and aliases).
    ``origin`` defaults to "built-in" for genbench's own modules and to "module:Class" otherwise."""

    def decorate(cls: type[GenerativeModel]) -> type[GenerativeModel]:
        if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
            raise TypeError(f"{cls!r} is not a GenerativeModel subclass")
        for key in (name, *aliases):
            if not (isinstance(key, str) and MODEL_NAME.fullmatch(key)):
                raise ValueError(f"model name {key!r} must be letters, digits, '_', '.' or '-'")
            if key in MODELS or key in ALIASES:
                raise ValueError(f"model name {key!r} is already registered")
        if inspect.isabstract(cls):
            raise TypeError(f"{cls.__name__} does not implement {', '.join(sorted(cls.__abstractmethods__))}")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        missing = set(PROFILE_NAMES) - set(getattr(cls, "profiles", {}))
        if missing:
            raise TypeError(f"{cls.__name__}.profiles lacks {sorted(missing)}")
        if cls.likelihood is not None and cls.likelihood not in KINDS:
            raise TypeError(f"{cls.__name__}.likelihood must be one of {sorted(KINDS)} or None")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        if not {"image_shape", "levels"} <= fields:
            raise TypeError(f"{cls.__name__}.Config must have image_shape and levels fields")
        overrides = {
            "log_prob": cls.likelihood is not None,
            "iwae_log_prob": cls.importance_weighted,
            "reconstruct": cls.can_reconstruct,
            "prior_latents": cls.can_interpolate or cls.has_decoder,
            "prior_log_prob": cls.has_decoder,
            "decoder_log_prob": cls.has_decoder,
            "decoder_sample": cls.has_decoder,
            "decode_latents": cls.can_interpolate,
        }
        for method, needed in overrides.items():
            if needed and getattr(cls, method) is getattr(GenerativeModel, method):
                raise TypeError(f"{cls.__name__} declares the capability but does not implement {method}")
        cls.name = name
        MODELS[name] = cls
        for alias in aliases:
            ALIASES[alias] = name
        builtin = cls.__module__.startswith(f"{__package__}.")
        ORIGINS[name] = origin or ("built-in" if builtin else f"{cls.__module__}:{cls.__qualname__}")
        return cls

    return decorate


def model_names() -> list[str]:
    """Registered names and aliases, for CLI choices."""
    return sorted([*MODELS, *ALIASES])


# Finds a family not registered yet and returns its registry name: genbench.models.plugins installs
# its loader here (imports and entry points), so this module does not import the one that imports it.
FINDERS: list[Callable[[str], str]] = []


def get_model_class(name: str) -> type[GenerativeModel]:
    """The family registered as ``name`` (or alias). ``package.module:Class`` imports and registers a
    family from outside genbench; a name not registered yet loads the entry-point plug-ins (once)."""
    for find in FINDERS:
        if ALIASES.get(name, name) not in MODELS:
            name = find(name)
    key = ALIASES.get(name, name)
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return MODELS[key]


def with_image_spec(config, image_shape: tuple[int, int, int], levels: int):
    """A model config for data of this shape and level count (the data decides, not the profile)."""
    return dataclasses.replace(config, image_shape=tuple(image_shape), levels=levels)


def build(
    name: str, profile: str, image_shape: tuple[int, int, int] | None = None, levels: int | None = None
) -> tuple[GenerativeModel, TrainConfig]:
    """A fresh model and its training schedule for a named profile, for images of ``image_shape``
    with ``levels`` intensities (default: the profile's, MNIST's (1, 28, 28) and 256)."""
    cls = get_model_class(name)
    if profile not in cls.profiles:
        raise KeyError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    model_config, train_config = cls.profiles[profile]()
    model_config = with_image_spec(
        model_config, image_shape or model_config.image_shape, levels or model_config.levels
    )
    return cls(model_config), train_config
