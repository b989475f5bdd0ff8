"""Optimizers, learning-rate schedules, gradient clipping and weight averaging, all built from a
run's TrainConfig: the loop owns them, so no model re-implements its own step for them.

A model's ``train_step`` calls ``Optimizers.step(group, loss)`` once per parameter group it
updates (the GAN twice: "d", then "g"). In a data-parallel run that step is where gradients are
averaged across ranks, before clipping, so every rank clips and steps the same global gradient
(``genbench.bench.engine.distributed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genbench.bench.engine.distributed import average_gradients
from genbench.models.base import GenerativeModel, TrainConfig


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of cfg.lr at 0-based ``step``: linear warm-up over cfg.warmup_steps, then
    constant or a cosine decay that reaches 0 at ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Optimizers:
    """One optimizer per parameter group of the model, stepped by the model's train_step."""

    def __init__(self, model: GenerativeModel, cfg: TrainConfig, total_steps: int, device: torch.device):
        self.cfg, self.total_steps = cfg, total_steps
        self.groups = model.parameter_groups()
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
        # Fused kernels on CUDA: one launch for all parameter tensors instead of several per tensor.
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizers = {
            name: cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
            for name, params in self.groups.items()
        }
        self.grad_norms: dict[str, Tensor] = {}  # of the last step, when clipping is on
        self.set_step(0)

    def set_step(self, step: int) -> None:
        """Set every learning rate for loop step ``step`` (a schedule is a pure function of it)."""
        lr = self.cfg.lr * lr_factor(self.cfg, step, self.total_steps)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def step(self, group: str, loss: Tensor) -> None:
        """Zero the group's gradients, back-propagate, average them across ranks, clip, step."""
        optimizer = self.optimizers[group]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.groups[group])
        if self.cfg.grad_clip is not None:
            self.grad_norms[f"grad_norm_{group}"] = nn.utils.clip_grad_norm_(
                self.groups[group], self.cfg.grad_clip
            )
        optimizer.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class EMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers),
    with the usual warm-up: the decay is min(decay, (1 + n) / (10 + n)) after n updates, so early
    averages are not dominated by the random initialization. Integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k] for k in floats], 1.0 - decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
