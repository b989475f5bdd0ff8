"""The one training loop. It owns the mechanics (device, precision, optimizers and their schedule,
clipping, EMA, timing, checkpoints, resume, validation) and never asks which model it has: the
model owns its math through ``train_step`` and ``loss``.

Host syncs happen only every ``log_every`` steps (history row, progress bar, finiteness check) and
before each checkpoint, so a checkpoint never holds a state reached through a non-finite loss.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.bench.checkpoint import LoopState, restore, save_checkpoint
from genbench.bench.data import MNIST, batches, epoch_order
from genbench.bench.device import autocast
from genbench.bench.optim import EMA, Optimizers
from genbench.bench.timing import PeakMemory, Stopwatch, device_name, synchronize
from genbench.core.errors import UserError
from genbench.core.files import write_text
from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim


class NonFiniteLoss(UserError):
    """Training diverged. The last good checkpoint is kept."""


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
    compile: bool = False
    progress: bool = True
    warmup_steps: int = 5  # steps excluded from the throughput figure (allocator, cudnn autotune, compile)


class _StopFlag:
    """Turns Ctrl-C (SIGINT) and a scheduler's SIGTERM into a flag the loop reads between steps, so
    the checkpoint it then writes holds a whole step (a KeyboardInterrupt could land inside an
    optimizer update)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.set = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.set:  # a second signal stops at once
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self) -> _StopFlag:
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
    model: GenerativeModel, images: torch.Tensor, batch_size: int, options: RunOptions
) -> dict[str, float]:
    """Mean of the model's loss terms over ``images``; bits/dim too for likelihood models (whose
    "loss" is the NLL, or negative bound, in nats per image). Runs in fp32 like the evaluation, so
    validation bits/dim are comparable with the final ones."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for x in batches(images, batch_size):
        for key, value in model.loss(x).items():
            totals[key] = totals.get(key, 0.0) + value.detach().float() * len(x)
    model.train()
    means = {key: float(total) / len(images) for key, total in totals.items()}
    if model.likelihood is not None:
        means["bpd"] = float(bits_per_dim(means["loss"], model.dims))
    return means


class Trainer:
    """Trains one model to cfg.epochs (or cfg.max_steps), validating at each epoch end,
    checkpointing to ``checkpoint`` and rewriting ``history`` (CSV) with each checkpoint, so a
    running or killed run shows its curves.

    After ``run`` the model holds the weights to evaluate: the EMA weights when cfg.ema_decay is
    set, else its own."""

    def __init__(
        self,
        model: GenerativeModel,
        data: MNIST,
        cfg: TrainConfig,
        seed: int,
        options: RunOptions,
        checkpoint: Path,
        identity: dict,
        history: Path | None = None,
    ) -> None:
        self.model, self.data, self.cfg, self.seed, self.options = model, data, cfg, seed, options
        self.checkpoint, self.identity, self.history = checkpoint, identity, history
        self.steps_per_epoch = len(data.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"--batch-size {cfg.batch_size} exceeds the {len(data.train)} training images; lower it"
            )
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps is not None else total
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
    def run(self, resume: dict | None = None) -> tuple[LoopState, dict[str, Any]]:
        """Train (or continue from the checkpoint ``resume``); returns the final state and a summary
        for the cost metrics."""
        if resume is not None:
            self.state = restore(resume, self.model, self.optimizers, self.ema, self.options.device)
        self.window_start_step = self.last_good = self.state.step
        self.model.train()
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            disable=not self.options.progress,
            unit="step",
            desc=f"{self.model.name} s{self.seed}",
            dynamic_ncols=True,
            leave=False,
        )
        try:
            with _StopFlag() as stop, self.memory:
                while not self.state.finished:
                    self._epoch(stop)
        except (RuntimeError, MemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            raise UserError(
                f"{self.model.name}: out of memory at batch size {self.cfg.batch_size} on "
                f"{self.options.device}; lower --batch-size (e.g. --batch-size {max(1, self.cfg.batch_size // 2)})"
            ) from None
        finally:
            self.bar.close()
        synchronize(self.options.device)
        if self.ema is not None:
            self.model.load_state_dict(self.ema.shadow)
        return self.state, self._summary()

    def _epoch(self, stop: _StopFlag) -> None:
        """The rest of the current epoch (from the saved position), then its validation."""
        state, cfg = self.state, self.cfg
        order = epoch_order(len(self.data.train), self.seed, state.epoch, self.options.device)
        order = order[state.batch_in_epoch * cfg.batch_size :]
        for x in batches(self.data.train, cfg.batch_size, order, drop_last=True):
            if state.step >= self.total_steps:
                break
            self._step(x)
            if state.step % cfg.log_every == 0:
                self._flush()
            if state.step % cfg.checkpoint_every == 0:
                self._write_checkpoint()
            if stop.set:
                self._write_checkpoint()
                raise TrainingInterrupted(f"interrupted at step {state.step}; checkpoint saved")
        epoch_done = state.batch_in_epoch >= self.steps_per_epoch
        state.finished = state.step >= self.total_steps
        if epoch_done or state.finished:
            self._write_checkpoint()  # the training done so far is safe before validation starts
            if state.validated_epoch < state.epoch:
                self._validate()
            if epoch_done and not state.finished:
                state.epoch += 1
                state.batch_in_epoch = 0
            self._write_checkpoint()

    def _step(self, x: torch.Tensor) -> None:
        state = self.state
        self.optimizers.set_step(state.step)
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
        stacked = torch.stack([torch.stack([t[k].float() for k in keys]) for t in pending]).cpu()  # (n, K)
        losses = stacked[:, keys.index("loss")]
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = self.window_start_step + int(bad[0]) + 1
            kept = (
                f"the last good checkpoint (step {self.last_good}) is kept"
                if self.last_good
                else "no checkpoint yet"
            )
            raise NonFiniteLoss(
                f"{self.model.name}: non-finite loss at step {step}; training diverged ({kept}); "
                "try a lower --lr"
            )
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
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}", refresh=False)
        self.bar.update(len(pending))
        self.pending = []
        self.window_start_step = state.step

    def _wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.session_start

    def _write_checkpoint(self) -> None:
        self._flush()
        self.state.wall_time_s = self._wall_time()
        self.session_start = time.perf_counter()
        if self.trained_steps:
            self.state.peak_memory_mb = max(self.state.peak_memory_mb or 0.0, self.memory.peak_mb_now())
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

    def _validate(self) -> None:
        images = self.data.val[: self.cfg.val_images]
        if self.ema is not None:
            with self.ema.applied(self.model):
                values = validate(self.model, images, self.cfg.batch_size, self.options)
        else:
            values = validate(self.model, images, self.cfg.batch_size, self.options)
        self.state.history.append(
            {
                "step": self.state.step,
                "epoch": self.state.epoch,
                "split": "val",
                "wall_time_s": self._wall_time(),
            }
            | values
        )
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
            "device_name": device_name(self.options.device),
            "steps": state.step,
        }
