"""Evaluation while a run trains: validations (the model's loss terms and bits/dim on the validation
subset, spread over the run and at each epoch end) and the rungs of a compute ladder
(``bench.engine.ladder``). A part of ``bench.engine.train.Trainer``, which holds the state these methods
read."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from genbench.bench.engine.data import Dataset
from genbench.bench.engine.device import exact_fp32
from genbench.bench.engine.distributed import broadcast_
from genbench.bench.engine.ladder import RungEvaluation, rung_record
from genbench.core.distributed import derive_seed, map_batches
from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim

if TYPE_CHECKING:
    from genbench.bench.engine.train import RunOptions


@torch.no_grad()
def validate(
    model: GenerativeModel, images: torch.Tensor, batch_size: int, options: RunOptions, seed: int = 0
) -> dict[str, float]:
    """Mean of the model's loss terms over ``images``; bits/dim too for likelihood models (whose
    "loss" is the NLL, or negative bound, in nats per image). Runs in fp32 like the evaluation (no
    TF32 either: ``exact_fp32``), so validation bits/dim are comparable with the final ones. Each
    batch draws its noise from (seed, batch) on a forked generator, leaving the training stream as
    it was; under torchrun the batches are split across ranks, giving a single process's numbers."""

    def sums(index: int, start: int, stop: int) -> dict[str, float]:
        torch.manual_seed(derive_seed("validation", seed, index))
        return {
            key: float(value.float()) * (stop - start)
            for key, value in model.loss(images[start:stop]).items()
        }

    model.eval()
    with torch.random.fork_rng(devices=_rng_devices(options.device)), exact_fp32():
        per_batch = map_batches(sums, len(images), batch_size)
    model.train()
    means = {key: sum(batch[key] for batch in per_batch) / len(images) for key in per_batch[0]}
    if model.likelihood is not None:
        means["bpd"] = float(bits_per_dim(means["loss"], model.dims))
    return means


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


class InRunEvaluation:
    """When the Trainer validates, and its compute-ladder rungs. The Trainer sets what they read:
    model, data, cfg, seed, options, ema, state, compute, total_steps, steps_per_epoch, val_every,
    rung_steps and rung_evaluation, and provides _write_checkpoint (its _validate writes the
    validation row, calling ``validate`` through bench.engine.train's name for it)."""

    model: GenerativeModel
    data: Dataset
    cfg: TrainConfig
    seed: int
    options: Any
    ema: Any
    state: Any
    compute: dict[str, Any]
    total_steps: int | float
    steps_per_epoch: int
    val_every: int | None
    rung_steps: list[int]
    rung_evaluation: RungEvaluation | None

    def _validation_due(self) -> bool:
        """A validation spread over the run, not at an epoch end or the last step (those validate)."""
        step = self.state.step
        return (
            self.val_every is not None
            and step % self.val_every == 0
            and step % self.steps_per_epoch != 0
            and step < self.total_steps
        )

    def _rung_validation_due(self) -> bool:
        """A rung's point on the validation curves, where no other validation falls."""
        step = self.state.step
        return (
            step in self.rung_steps
            and not self._validation_due()
            and step % self.steps_per_epoch != 0
            and step < self.total_steps
        )

    def _share_buffers(self) -> None:
        """Buffers that batches update (BatchNorm statistics) and their averages drift apart across
        ranks; the ranks validate and evaluate with rank 0's, which its checkpoints hold."""
        broadcast_([*self.model.buffers(), *(self.ema.shadow.values() if self.ema is not None else ())])

    def _rung_if_due(self) -> None:
        """At a rung's step, once: a checkpoint (the training is safe), the rung's evaluation of the
        model as it is (its EMA weights where kept), and a checkpoint holding the rung's record."""
        state = self.state
        due = [i for i, s in enumerate(self.rung_steps) if s == state.step and i >= len(state.ladder)]
        if self.rung_evaluation is None or not due or state.step >= self.total_steps:
            return  # not a rung, evaluated before the checkpoint this run resumed from, or the last
            # step's: the run's final evaluation is that rung's (bench.engine.ladder.final_rungs)
        self._write_checkpoint()
        self._share_buffers()
        for index in due:  # rungs closer than a step share it
            with torch.random.fork_rng(devices=_rng_devices(self.options.device)):  # training's stream stays
                with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
                    evaluated = self.rung_evaluation(self.model, index)
            self.model.train()
            flops = self.compute["train_flops_per_step"]
            rung = self.cfg.compute_rungs[index]
            state.ladder.append(rung_record(rung, state.step, flops, self.seed, index, evaluated))
        self._write_checkpoint()
