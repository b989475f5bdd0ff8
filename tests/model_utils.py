"""Driving a model's train_step outside the loop, with the loop's own optimizers."""

from genbench.bench.engine.optim import Optimizers
from genbench.models.base import TrainConfig


def optimizers_for(
    model, lr: float = 1e-3, total_steps: int = 10_000, config: TrainConfig | None = None, **fields
):
    """The loop's Optimizers for ``model``: from ``config`` (a profile's TrainConfig) or from
    TrainConfig(lr=lr, **fields)."""
    config = config or TrainConfig(lr=lr, **fields)
    return Optimizers(model, config, total_steps=total_steps, device=model.device)
