"""The one interface every model family implements, its typed profiles, and the model registry.

Conventions shared by every family (the loop and the metrics rely on them):

* Images enter every method as uint8 tensors ``(B, C, H, W)`` with values 0..255 on the model's
  device. The model owns its own preprocessing (dequantization, scaling, logit transform).
* ``log_prob`` is in nats per image on the 8-bit protocol: the density of uniformly dequantized
  data ``(x + u) / 256`` on [0, 1)^D, which equals the probability of the discrete 8-bit image for a
  discrete model. ``bits_per_dim`` converts it. Likelihood terms are computed in float32 even
  when the loop trains under bf16 autocast.
* ``sample`` returns uint8 ``(n, C, H, W)``; ``reconstruct`` returns floats in [0, 1].
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

Likelihood = Literal["exact", "bound"] | None
PROFILE_NAMES = ("smoke", "quick", "full")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training schedule of a profile. CLI options such as --epochs override single fields."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    max_steps: int | None = None  # stop early (smoke profiles); None runs all epochs
    val_images: int = 5000  # validation subset evaluated at each epoch end
    checkpoint_every: int = 500  # steps between checkpoints (one is also written at each epoch end)
    log_every: int = 20  # steps between host syncs: history rows, progress bar, finiteness check

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_images", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


# A profile is a factory so that every call returns fresh, independent configs.
Profile = Callable[[], tuple[object, TrainConfig]]


def dequantize(x: Tensor) -> Tensor:
    """Uniform dequantization of uint8 pixels: (x + u) / 256 with u ~ U[0, 1), in [0, 1)."""
    return (x.float() + torch.rand_like(x, dtype=torch.float32)) / 256.0


def to_unit(x: Tensor) -> Tensor:
    """uint8 0..255 -> float [0, 1]."""
    return x.float() / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """float [0, 1] -> uint8 0..255 (rounded, clamped)."""
    return (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def bits_per_dim(nats_per_image: Tensor | float, dims: int) -> Tensor | float:
    """bpd = nats / (D ln 2); D = 784 for MNIST."""
    return nats_per_image / (dims * math.log(2.0))


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of every family. Subclasses set the class attributes and implement the math."""

    name: ClassVar[str] = ""
    likelihood: ClassVar[Likelihood] = None  # "exact" (PixelCNN, RealNVP), "bound" (VAE), None (GAN)
    can_reconstruct: ClassVar[bool] = False
    Config: ClassVar[type]
    profiles: ClassVar[dict[str, Profile]]

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.config.image_size
        return (getattr(self.config, "image_channels", 1), size, size)

    def configure_optimizers(self, lr: float) -> dict[str, Optimizer]:
        return {"main": torch.optim.Adam(self.parameters(), lr=lr)}

    @abc.abstractmethod
    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Training objective on a uint8 batch. Must hold "loss" (a scalar); other terms are logged."""

    def train_step(self, x: Tensor, optimizers: dict[str, Optimizer]) -> dict[str, Tensor]:
        """One optimisation step. Returns detached scalars; the loop never calls .item() per step."""
        (opt,) = optimizers.values()
        opt.zero_grad(set_to_none=True)
        terms = self.loss(x)
        terms["loss"].backward()
        opt.step()
        return {k: v.detach() for k, v in terms.items()}

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples as uint8 (n, C, H, W). ``generator`` lives on the model's device."""

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-image log-likelihood in nats on the 8-bit protocol (a lower bound for "bound")."""
        raise NotImplementedError(f"{self.name} has no likelihood")

    def iwae_log_prob(self, x: Tensor, k: int) -> Tensor:
        """Importance-weighted estimate with k samples; required when likelihood == "bound"."""
        raise NotImplementedError(f"{self.name} has no importance-weighted bound")

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction of a uint8 batch as floats in [0, 1]."""
        raise NotImplementedError(f"{self.name} cannot reconstruct")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


MODELS: dict[str, type[GenerativeModel]] = {}
ALIASES: dict[str, str] = {}


def register_model(name: str, aliases: tuple[str, ...] = ()):
    """Class decorator: validate a family and add it to the registry under ``name`` (and aliases)."""

    def decorate(cls: type[GenerativeModel]) -> type[GenerativeModel]:
        if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
            raise TypeError(f"{cls!r} is not a GenerativeModel subclass")
        for key in (name, *aliases):
            if key in MODELS or key in ALIASES:
                raise ValueError(f"model name {key!r} is already registered")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        missing = set(PROFILE_NAMES) - set(getattr(cls, "profiles", {}))
        if missing:
            raise TypeError(f"{cls.__name__}.profiles lacks {sorted(missing)}")
        if cls.likelihood not in ("exact", "bound", None):
            raise TypeError(f"{cls.__name__}.likelihood must be 'exact', 'bound' or None")
        overrides = {
            "log_prob": cls.likelihood is not None,
            "iwae_log_prob": cls.likelihood == "bound",
            "reconstruct": cls.can_reconstruct,
        }
        for method, needed in overrides.items():
            if needed and getattr(cls, method) is getattr(GenerativeModel, method):
                raise TypeError(f"{cls.__name__} declares the capability but does not implement {method}")
        cls.name = name
        MODELS[name] = cls
        for alias in aliases:
            ALIASES[alias] = name
        return cls

    return decorate


def model_names() -> list[str]:
    """Registered names and aliases, for CLI choices."""
    return sorted([*MODELS, *ALIASES])


def get_model_class(name: str) -> type[GenerativeModel]:
    key = ALIASES.get(name, name)
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return MODELS[key]


def build(name: str, profile: str) -> tuple[GenerativeModel, TrainConfig]:
    """A fresh model and its training schedule for a named profile."""
    cls = get_model_class(name)
    if profile not in cls.profiles:
        raise KeyError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    model_config, train_config = cls.profiles[profile]()
    return cls(model_config), train_config
