"""The one training loop. It owns the mechanics (device, precision, optimizers and their schedule,
clipping, EMA, timing, checkpoints, resume, validation) and never asks which model it has: the
model owns its math through ``train_step`` and ``loss``.

Host syncs happen only every ``log_every`` steps (history row, progress, divergence check) and
before each checkpoint, so a checkpoint never holds a state reached through a diverged loss.

Under torchrun the same loop runs on every rank (``genbench.bench.engine.distributed``): each trains on its
slice of the global batch, logs the mean over ranks, and rank 0 alone writes checkpoints and the
history. A time budget (``TrainConfig.time_budget_s``) ends training like the last step of the
schedule does, at the first step boundary past it, and the steps reached are recorded. A compute
budget (``TrainConfig.compute_budget``, FLOPs) decides the steps before training starts
(``genbench.bench.engine.budget``). Either budget alone decides the steps: epochs and max_steps do not cap it.
A compute ladder (an increasing tuple of budgets) trains to its last rung and evaluates the model at
each rung's step (``genbench.bench.engine.ladder``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from genbench.bench.engine.budget import count_step, measure_peak, planned_steps, rung_steps
from genbench.bench.engine.checkpoint import LoopState, restore, save_checkpoint
from genbench.bench.engine.data import Dataset, epoch_order
from genbench.bench.engine.device import autocast
from genbench.bench.engine.distributed import (
    any_rank,
    broadcast_module,
    check_batch_size,
    seed_step,
    shard,
)
from genbench.bench.engine.in_run_evaluation import InRunEvaluation, validate
from genbench.bench.engine.ladder import RungEvaluation
from genbench.bench.engine.optim import EMA, Optimizers
from genbench.bench.engine.steplog import Diverged, NonFiniteLoss, StepLog, write_history
from genbench.bench.engine.stopflag import StopFlag
from genbench.bench.engine.timing import PeakMemory, device_name, synchronize
from genbench.bench.record.tensorboard import Board
from genbench.core.distributed import rank, world_size
from genbench.core.errors import UserError
from genbench.models.base import GenerativeModel, TrainConfig

__all__ = [
    "Diverged", "NonFiniteLoss", "RunOptions", "StopFlag", "Trainer", "TrainingInterrupted", "validate",
    "write_history",
]  # fmt: skip


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed."""

    exit_code = 130  # the shell's convention for a SIGINT


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run executes; none of it changes what is computed, only where and how fast."""

    device: torch.device
    precision: str = "fp32"
    compile: bool | None = None  # None: the family's default (bench.engine.device.compile_choice)
    progress: bool = True
    warmup_steps: int = 5  # steps excluded from the throughput figure (allocator, cudnn autotune, compile)
    processes: int = 1  # data-parallel ranks (torchrun): the same global batches, each rank a slice
    threads: dict[str, Any] | None = None  # bench.engine.threads.ThreadChoice.record() of a CPU run
    tensorboard: bool = False  # also write history rows and sample grids to <run>/tensorboard/


class Trainer(InRunEvaluation):
    """Trains one model to cfg.epochs (or cfg.max_steps, or a budget), validating at each epoch end,
    checkpointing to ``checkpoint`` and rewriting ``history`` (CSV) with each checkpoint, so a
    running or killed run shows its curves. Its parts: the steps, checkpoints and resume (here), the
    step log between host syncs (``bench.engine.steplog``), the validations and the rungs of a compute
    ladder (``bench.engine.in_run_evaluation``; a rung is evaluated by ``rung_evaluation`` when given, and
    validated in any case).

    After ``run`` the model holds the weights to evaluate: the EMA weights when cfg.ema_decay is
    set, else its own."""

    def __init__(
        self,
        model: GenerativeModel,
        data: Dataset,
        cfg: TrainConfig,
        seed: int,
        options: RunOptions,
        checkpoint: Path,
        identity: dict,
        history: Path | None = None,
        rung_evaluation: RungEvaluation | None = None,
    ) -> None:
        self.model, self.data, self.cfg, self.seed, self.options = model, data, cfg, seed, options
        self.checkpoint, self.identity, self.history = checkpoint, identity, history
        check_batch_size(cfg.batch_size)  # the global batch, split evenly over the ranks
        self.rank0 = rank() == 0
        live = options.tensorboard and history is not None and self.rank0
        self.board = Board(history.parent) if live else None  # type: ignore[union-attr]
        self.steps_per_epoch = len(data.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"--batch-size {cfg.batch_size} exceeds the {len(data.train)} training images; lower it"
            )
        # Counted once, before the clock starts, on the real model at the run's batch size: the steps
        # of a compute budget and the run's FLOP numbers (bench.engine.budget; the model is left untouched).
        self.compute = count_step(model, data.train[: cfg.batch_size])
        self.compute["peak_flops_per_s"], self.compute["peak_protocol"] = measure_peak(
            options.device, options.precision
        )
        flops_per_step = self.compute["train_flops_per_step"]
        self.total_steps = planned_steps(cfg, self.steps_per_epoch, flops_per_step)
        # The steps of a compute ladder's rungs (none for a single budget: its one rung is the end).
        ladder = isinstance(cfg.compute_budget, tuple)
        self.rung_steps = rung_steps(cfg.compute_rungs, flops_per_step) if ladder else []
        self.rung_evaluation = rung_evaluation
        # Steps between the validations spread over the run (None: the epoch ends only; a time
        # budget's open-ended run validates at its epoch ends).
        self.val_every = (
            int(self.total_steps) // cfg.validations
            if math.isfinite(self.total_steps) and 1 < cfg.validations <= self.total_steps
            else None
        )
        self.optimizers = Optimizers(model, cfg, self.total_steps, options.device)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.state = LoopState()
        self.log = StepLog(self)
        self.session_start = time.perf_counter()  # wall time of this process's share of the run
        self.last_good = 0  # step of the last checkpoint written
        self.memory = PeakMemory(options.device)
        self.trained_steps = 0  # steps taken by this process

    # --- the loop -------------------------------------------------------------------------------
    def run(
        self, resume: dict | None = None, stop: StopFlag | None = None
    ) -> tuple[LoopState, dict[str, Any]]:
        """Train (or continue from the checkpoint ``resume``); returns the final state and a summary
        for the cost metrics. ``stop``: the run's signal flag (default: one for this call)."""
        if resume is not None:
            self.state = restore(resume, self.model, self.optimizers, self.ema, self.options.device)
        # Every rank starts from rank 0's weights; averaged gradients keep them equal.
        broadcast_module(self.model)
        self.last_good = self.state.step
        self.model.train()
        self.log.open(self.total_steps, self.state.step, f"{self.model.name} s{self.seed}")
        try:
            with contextlib.ExitStack() as stack:
                stop = stop if stop is not None else stack.enter_context(StopFlag())
                stack.enter_context(self.memory)
                self._rung_if_due()  # resumed after an interrupted rung evaluation
                while not self.state.finished:
                    self._epoch(stop)
                if self.state.validated_epoch < self.state.epoch:
                    self._end_of_epoch(stop)  # resumed after an interrupted final validation
        except (RuntimeError, MemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            raise UserError(
                f"{self.model.name}: out of memory at batch size {self.cfg.batch_size} on "
                f"{self.options.device}; lower --batch-size "
                f"(e.g. --batch-size {max(1, self.cfg.batch_size // 2)})"
            ) from None
        finally:
            self.log.bar.close()
            if self.board is not None:
                self.board.close()
        synchronize(self.options.device)
        if self.ema is not None:
            self.model.load_state_dict(self.ema.shadow)
        return self.state, self._summary()

    def _epoch(self, stop: StopFlag) -> None:
        """The rest of the current epoch (from the saved position), then its validation."""
        state, cfg = self.state, self.cfg
        order = epoch_order(len(self.data.train), self.seed, state.epoch, self.options.device)
        order = order[state.batch_in_epoch * cfg.batch_size :]
        with stop.deferring("training"):
            self._steps(order, stop)  # to the epoch's end, the last step or the time budget
            state.finished = state.step >= self.total_steps or state.budget_stop_s is not None
            self._write_checkpoint()  # the training done so far is safe before validation starts
        self._end_of_epoch(stop)

    def _steps(self, order: torch.Tensor, stop: StopFlag) -> None:
        state, cfg = self.state, self.cfg
        for x in self.data.training_batches(cfg.batch_size, order, self.seed, state.step):
            if state.step >= self.total_steps:
                break
            self._step(shard(x))  # (B / N, C, H, W) of the global batch (B, C, H, W)
            if state.step % cfg.log_every == 0:
                self._flush()
            if state.step % cfg.checkpoint_every == 0:
                self._write_checkpoint()
            if self._validation_due() or self._rung_validation_due():
                self._flush()  # the training row first
                self._validate(epoch_end=False)
            self._rung_if_due()
            signalled, over_budget = self._agree(stop, budget=True)
            if over_budget:
                state.budget_stop_s = self._wall_time()
                break
            if signalled:
                self._write_checkpoint()
                raise self._interrupted(stop)

    def _agree(self, stop: StopFlag, budget: bool = False) -> tuple[bool, bool]:
        """Whether to stop for a signal (on any rank), and whether the time budget is spent (on rank
        0's clock): every rank stops after the same step."""
        spent = budget and self.cfg.time_budget_s is not None and self.rank0
        spent = spent and self._wall_time() >= self.cfg.time_budget_s
        signalled, spent = any_rank(stop.set, spent)
        if signalled and not stop.set:
            stop.set, stop.signal = True, "a signal to another rank"
        return signalled, spent

    def _interrupted(self, stop: StopFlag) -> TrainingInterrupted:
        return TrainingInterrupted(f"interrupted ({stop.signal}) at step {self.state.step}; checkpoint saved")

    def _end_of_epoch(self, stop: StopFlag) -> None:
        """Validation (signals stop it at once: the checkpoint is written), then the next epoch's
        start, checkpointed."""
        state = self.state
        if self._agree(stop)[0]:  # a signal during the checkpoint write above
            raise self._interrupted(stop)
        if state.validated_epoch < state.epoch:
            stop.phase = "validation"
            self._validate()
            stop.phase = "training"
        with stop.deferring("training"):
            # A time budget spans epochs: one spent by the epoch's end (or its validation) ends
            # training here, at this step boundary, rather than after the next epoch's first step.
            if not state.finished and self._agree(stop, budget=True)[1]:
                state.finished, state.budget_stop_s = True, self._wall_time()
            if not state.finished:
                state.epoch += 1
                state.batch_in_epoch = 0
            self._write_checkpoint()

    def _step(self, x: torch.Tensor) -> None:
        state = self.state
        self.optimizers.set_step(state.step)
        seed_step(self.seed, state.step)  # under torchrun: this rank's noise for this step
        with autocast(self.options.device, self.options.precision):
            terms = self.model.train_step(x, self.optimizers, state.step)
        if self.optimizers.grad_norms:
            terms = {**terms, **{k: v.detach() for k, v in self.optimizers.grad_norms.items()}}
        if self.ema is not None:
            self.ema.update(self.model)
        self.log.pending.append(terms)
        self.trained_steps += 1
        state.step += 1
        state.batch_in_epoch += 1

    # --- checkpoints ----------------------------------------------------------------------------
    def _flush(self) -> None:
        self.log.flush(self.state, self._wall_time)

    def _wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.session_start

    def _write_checkpoint(self) -> None:
        self._flush()
        self.state.wall_time_s = self._wall_time()
        self.session_start = time.perf_counter()
        if self.trained_steps:
            self.state.peak_memory_mb = max(self.state.peak_memory_mb or 0.0, self.memory.peak_mb_now())
        if self.rank0:
            save_checkpoint(
                self.checkpoint,
                self.model,
                self.optimizers,
                self.ema,
                self.state,
                self.identity,
                self.options.device,
            )
            if self.history is not None:
                write_history(self.history, self.state.history)
        self.last_good = self.state.step
        self.log.window.lap()  # checkpoint I/O is not training time

    def _validate(self, epoch_end: bool = True) -> None:
        """A validation row in the history (``validate``, looked up here: tests replace it)."""
        images = self.data.val[: self.cfg.val_images]
        self._share_buffers()
        if self.ema is not None:
            with self.ema.applied(self.model):
                values = validate(self.model, images, self.cfg.batch_size, self.options, self.seed)
        else:
            values = validate(self.model, images, self.cfg.batch_size, self.options, self.seed)
        self.state.history.append(
            {
                "step": self.state.step,
                "epoch": self.state.epoch,
                "split": "val",
                "wall_time_s": self._wall_time(),
            }
            | values
        )
        if self.board is not None:
            self.board.validation(self.state.history[-1], self.model, self.seed)
        if epoch_end:
            self.state.validated_epoch = self.state.epoch
        self.log.window.lap()  # validation is not training time

    def _summary(self) -> dict[str, Any]:
        state = self.state
        return {
            "train_images_per_s": state.timed_images / state.timed_seconds
            if state.timed_seconds > 0
            else None,
            "steps_timed": state.timed_steps,
            "warmup_steps": self.options.warmup_steps,
            "peak_memory_mb": state.peak_memory_mb,
            "memory_kind": self.memory.kind,
            "wall_time_s": state.wall_time_s,
            "batch_size": self.cfg.batch_size,
            "precision": self.options.precision,
            "compile": bool(self.options.compile),
            "device": str(self.options.device),
            "device_name": device_name(self.options.device),
            "processes": world_size(),
            "steps": state.step,
            "time_budget_s": self.cfg.time_budget_s,
            "compute_budget": self.cfg.compute_budget,
            **self.compute,
            "stopped_by": self._stopped_by(),
            "budget_stop_s": state.budget_stop_s,  # the loop's wall time at the step the budget ended
        }

    def _stopped_by(self) -> str:
        if self.state.budget_stop_s is not None:
            return "time budget"
        return "compute budget" if self.cfg.compute_budget is not None else "schedule"
