"""The one training loop. It owns the mechanics (device, precision, optimizers and their schedule,
clipping, EMA, timing, checkpoints, resume, validation) and never asks which model it has: the
model owns its math through ``train_step`` and ``loss``.

Host syncs happen only every ``log_every`` steps (history row, progress, divergence check) and
before each checkpoint, so a checkpoint never holds a state reached through a diverged loss.

Under torchrun the same loop runs on every rank (``genbench.bench.distributed``): each trains on its
slice of the global batch, logs the mean over ranks, and rank 0 alone writes checkpoints and the
history. A time budget (``TrainConfig.time_budget_s``) ends training like the last step of the
schedule does, at the first step boundary past it, and the steps reached are recorded. A compute
budget (``TrainConfig.compute_budget``, FLOPs) decides the steps before training starts
(``genbench.bench.budget``). Either budget alone decides the steps: epochs and max_steps do not cap it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.bench.budget import count_step, measure_peak, planned_steps
from genbench.bench.checkpoint import LoopState, restore, save_checkpoint
from genbench.bench.data import Dataset, epoch_order
from genbench.bench.device import autocast, exact_fp32
from genbench.bench.distributed import (
    any_rank,
    broadcast_,
    broadcast_module,
    check_batch_size,
    seed_step,
    shard,
)
from genbench.bench.optim import EMA, Optimizers
from genbench.bench.tensorboard import Board
from genbench.bench.timing import PeakMemory, Stopwatch, device_name, synchronize
from genbench.core.distributed import all_reduce_, derive_seed, map_batches, rank, world_size
from genbench.core.errors import UserError
from genbench.core.files import write_text
from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim


class Diverged(UserError):
    """Training diverged (a non-finite or exploding loss). The last good checkpoint is kept."""


class NonFiniteLoss(Diverged):
    """A NaN or infinite loss."""


# A loss this many times larger than the one training started from (and than 1, for losses that
# start near 0) has exploded. Training lowers its loss: no smoke run of the five families (seeds 0
# and 1) logged a loss above its first; a GAN's losses swing with the balance of G and D by factors
# of ten at most. The smoke GAN at --lr 1e9 reaches 3e20 at its second step.
EXPLODING_FACTOR = 1e4
PLAIN_PROGRESS_EVERY_S = 30.0  # a progress line in logs (stderr not a terminal) at most this often


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
    compile: bool | None = None  # None: the family's default (bench.device.compile_choice)
    progress: bool = True
    warmup_steps: int = 5  # steps excluded from the throughput figure (allocator, cudnn autotune, compile)
    processes: int = 1  # data-parallel ranks (torchrun): the same global batches, each rank a slice
    threads: dict[str, Any] | None = None  # bench.threads.ThreadChoice.record() of a CPU run
    tensorboard: bool = False  # also write history rows and sample grids to <run>/tensorboard/


class StopFlag:
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM, for the whole of a run.

    While the loop trains or writes a checkpoint (``deferring``) a signal only sets the flag: the
    loop finishes the step, writes a checkpoint and raises TrainingInterrupted, so the checkpoint
    holds whole steps (a KeyboardInterrupt could land inside an optimizer update). Anywhere else
    (validation, evaluation, writing results) it raises KeyboardInterrupt at once, like Python's own
    SIGINT: the checkpoint written before those phases already holds all the training, and a
    validation or a sampling of a big model stops within one operation instead of minutes later.
    A second signal always stops at once. ``signal`` and ``phase`` name what was interrupted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.set = False
        self.signal: str | None = None  # "SIGINT" or "SIGTERM" once one arrived
        self.phase = "starting"  # what the run is doing, for the interruption message
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        first = not self.set
        self.set, self.signal = True, signal.Signals(signum).name
        if first and self._deferring:
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferring(self, phase: str):
        """Within the block a first signal only sets the flag; the block checks it."""
        previous = self._deferring, self.phase
        self._deferring, self.phase = True, phase
        try:
            yield
        finally:
            self._deferring, self.phase = previous

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


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


class Trainer:
    """Trains one model to cfg.epochs (or cfg.max_steps, or a budget), validating at each epoch end,
    checkpointing to ``checkpoint`` and rewriting ``history`` (CSV) with each checkpoint, so a
    running or killed run shows its curves.

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
        # of a compute budget and the run's FLOP numbers (bench.budget; the model is left untouched).
        self.compute = count_step(model, data.train[: cfg.batch_size])
        self.compute["peak_flops_per_s"], self.compute["peak_protocol"] = measure_peak(
            options.device, options.precision
        )
        self.total_steps = planned_steps(cfg, self.steps_per_epoch, self.compute["train_flops_per_step"])
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
        self.pending: list[dict[str, torch.Tensor]] = []  # per-step terms since the last host sync
        self.window = Stopwatch(options.device)
        self.window_start_step = 0
        self.session_start = time.perf_counter()  # wall time of this process's share of the run
        self.last_good = 0  # step of the last checkpoint written
        self.bar: Any = None
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
        self.window_start_step = self.last_good = self.state.step
        self.model.train()
        # Carriage-return frames of a bar are noise in a log file: there, plain lines (see _flush).
        self.plain_progress = self.options.progress and not sys.stderr.isatty()
        self.last_line = -math.inf
        self.bar = tqdm(
            total=self.total_steps if math.isfinite(self.total_steps) else None,  # a time budget's: open
            initial=self.state.step,
            disable=not self.options.progress or self.plain_progress or not self.rank0,
            unit="step",
            desc=f"{self.model.name} s{self.seed}",
            dynamic_ncols=True,
            leave=False,
        )
        try:
            with contextlib.ExitStack() as stack:
                stop = stop if stop is not None else stack.enter_context(StopFlag())
                stack.enter_context(self.memory)
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
            self.bar.close()
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
            if self._validation_due():
                self._flush()  # the training row first
                self._validate(epoch_end=False)
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
        self.pending.append(terms)
        self.trained_steps += 1
        state.step += 1
        state.batch_in_epoch += 1

    # --- bookkeeping ----------------------------------------------------------------------------
    def _flush(self) -> None:
        """Host sync: check finiteness, record a history row, advance the progress bar."""
        if not self.pending:
            return
        state, pending = self.state, self.pending
        seconds = self.window.lap()
        keys = list(pending[0])
        stacked = torch.stack([torch.stack([t[k].float() for k in keys]) for t in pending])  # (n, K)
        stacked = all_reduce_(stacked, "mean").cpu()  # the global batch's means: equal slices, equal weights
        self._check_diverged(stacked[:, keys.index("loss")])
        images = len(pending) * self.cfg.batch_size
        if self.window_start_step >= self.options.warmup_steps:
            state.timed_images += images
            state.timed_seconds += seconds
            state.timed_steps += len(pending)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "split": "train",
            "wall_time_s": self._wall_time(),
            "images_per_s": images / seconds if seconds > 0 else None,
            "lr": self.optimizers.optimizers[next(iter(self.optimizers.optimizers))].param_groups[0]["lr"],
        }
        row |= dict(zip(keys, stacked.mean(0).tolist(), strict=True))
        state.history.append(row)
        if self.board is not None:
            self.board.row(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}", refresh=False)
        self.bar.update(len(pending))
        if self.plain_progress and self.rank0 and time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY_S:
            self.last_line = time.monotonic()
            speed = f", {row['images_per_s']:.0f} images/s" if row["images_per_s"] else ""
            print(
                f"{self.model.name} s{self.seed}: step {state.step}{self._of_total()}, "
                f"loss {row['loss']:.4g}{speed}, {row['wall_time_s']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        self.pending = []
        self.window_start_step = state.step

    def _check_diverged(self, losses: torch.Tensor) -> None:
        """Stop on a non-finite loss, or one EXPLODING_FACTOR times the scale training started from:
        the first logged window's mean loss (kept in the history, so a resumed run has the same
        reference), or the first step's loss before any window was logged."""
        first = next((row["loss"] for row in self.state.history if row.get("split") == "train"), None)
        scale = max(abs(first if first is not None else float(losses[0])), 1.0)
        non_finite = ~torch.isfinite(losses)
        bad = (non_finite | (losses.abs() > EXPLODING_FACTOR * scale)).nonzero()
        if not len(bad):
            return
        index = int(bad[0])
        step = self.window_start_step + index + 1
        kept = (
            f"the last good checkpoint (step {self.last_good}) is kept"
            if self.last_good
            else "no checkpoint yet"
        )
        if non_finite[index]:
            raise NonFiniteLoss(
                f"{self.model.name}: non-finite loss at step {step}; training diverged ({kept}); "
                "try a lower --lr"
            )
        raise Diverged(
            f"{self.model.name}: loss {float(losses[index]):.3g} at step {step}, over "
            f"{EXPLODING_FACTOR:.0e} times the {scale:.3g} training started from; training diverged "
            f"({kept}); try a lower --lr"
        )

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
        self.window.lap()  # checkpoint I/O is not training time

    def _validation_due(self) -> bool:
        """A validation spread over the run, not at an epoch end or the last step (those validate)."""
        step = self.state.step
        return (
            self.val_every is not None
            and step % self.val_every == 0
            and step % self.steps_per_epoch != 0
            and step < self.total_steps
        )

    def _validate(self, epoch_end: bool = True) -> None:
        images = self.data.val[: self.cfg.val_images]
        # Buffers that batches update (BatchNorm statistics) and their averages drift apart across
        # ranks; the ranks validate with rank 0's, which its checkpoints hold. Validation follows
        # the last step, so the evaluation sees them too.
        broadcast_([*self.model.buffers(), *(self.ema.shadow.values() if self.ema is not None else ())])
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
        self.window.lap()  # validation is not training time

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

    def _of_total(self) -> str:
        return f"/{self.total_steps}" if math.isfinite(self.total_steps) else ""  # a time budget's: open

    def _stopped_by(self) -> str:
        if self.state.budget_stop_s is not None:
            return "time budget"
        return "compute budget" if self.cfg.compute_budget is not None else "schedule"
