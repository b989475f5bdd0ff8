"""The one training loop. It owns the mechanics (device, precision, timing, checkpoints, resume,
validation) and never asks which model it has: the model owns its math through ``train_step`` and
``loss``.

Host syncs happen only every ``log_every`` steps (history row, progress bar, finiteness check) and
before each checkpoint, so a checkpoint never holds a state reached through a non-finite loss.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from genbench.bench.data import MNIST, batches, epoch_order
from genbench.bench.timing import PeakMemory, Stopwatch, device_name, synchronize
from genbench.core.errors import UserError
from genbench.core.files import save_torch, write_text
from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim
from tqdm.auto import tqdm

CHECKPOINT_FORMAT = "genbench-checkpoint-v1"
PRECISIONS = ("fp32", "bf16")


class NonFiniteLoss(UserError):
    """Training diverged. The last good checkpoint is kept."""


class TrainingInterrupted(UserError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""

    exit_code = 130  # the shell's convention for a SIGINT


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclasses.dataclass(frozen=True)
class RunOptions:
    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    progress: bool = True
    warmup_steps: int = 5  # steps excluded from the throughput figure (allocator, cudnn autotune, compile)


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the network's matmuls and convolutions; models keep likelihood sums in fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare_model(model: GenerativeModel, options: RunOptions) -> GenerativeModel:
    """Move to the device; channels_last and torch.compile where asked (compiles each submodule in
    place, so state_dict keys and the model's own methods stay as they are)."""
    model.to(options.device)
    if options.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    if options.compile:
        for child in model.children():
            child.compile()
    return model


# --- checkpoints ----------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already done
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timed_images: int = 0  # images and seconds after warm-up, for the throughput figure
    timed_seconds: float = 0.0
    timed_steps: int = 0
    wall_time_s: float = 0.0
    validated_epoch: int = -1  # last epoch whose end-of-epoch validation ran


def save_checkpoint(path: Path, model, optimizers, state: LoopState, identity: dict) -> None:
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    save_torch(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "identity": identity,
            "model": model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "state": dataclasses.asdict(state),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": cuda_rng,
        },
    )


def load_checkpoint(path: Path, identity: dict) -> dict:
    """Read a checkpoint safely (weights_only) and check it belongs to this run."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"no checkpoint at {path}: the run stopped before its first checkpoint; start it again"
        ) from None
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} is truncated or not a genbench checkpoint ({type(exc).__name__}); "
            "delete it and start the run again"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint; start the run again")
    if ckpt.get("identity") != identity:
        theirs = ckpt.get("identity") or {}
        diff = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        raise UserError(
            f"checkpoint {path} belongs to a different run (differs in {', '.join(diff)}); "
            "resume with the run's own config"
        )
    return ckpt


def restore(ckpt: dict, model, optimizers) -> LoopState:
    model.load_state_dict(ckpt["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    torch.set_rng_state(ckpt["rng_cpu"])
    if ckpt["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    return LoopState(**ckpt["state"])


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


# --- the loop --------------------------------------------------------------------------------------
def _dims(model: GenerativeModel) -> int:
    return math.prod(model.image_shape)


@torch.no_grad()
def validate(
    model: GenerativeModel, images: torch.Tensor, batch_size: int, options: RunOptions
) -> dict[str, float]:
    """Mean of the model's loss terms over ``images``; bits/dim too for likelihood models (whose
    "loss" is the NLL, or negative bound, in nats per image)."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    with autocast(options.device, options.precision):
        for x in batches(images, batch_size):
            for key, value in model.loss(x).items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() * len(x)
    model.train()
    means = {key: float(total) / len(images) for key, total in totals.items()}
    if model.likelihood is not None:
        means["bpd"] = float(bits_per_dim(means["loss"], _dims(model)))
    return means


def train(
    model: GenerativeModel,
    data: MNIST,
    cfg: TrainConfig,
    seed: int,
    options: RunOptions,
    checkpoint: Path,
    identity: dict,
    resume: dict | None = None,
    history: Path | None = None,
) -> tuple[LoopState, dict[str, Any]]:
    """Train until cfg.epochs (or cfg.max_steps), validating each epoch, checkpointing to
    ``checkpoint`` and rewriting ``history`` (CSV) with each checkpoint, so a running or killed run
    shows its curves. Returns the final state and a summary for the cost metrics."""
    optimizers = model.configure_optimizers(cfg.lr)
    state = restore(resume, model, optimizers) if resume is not None else LoopState()
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {cfg.batch_size} exceeds the {len(data.train)} training images; lower it"
        )
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    val_images = data.val[: cfg.val_images]
    model.train()

    pending: list[dict[str, torch.Tensor]] = []  # per-step terms since the last host sync
    window = Stopwatch(options.device)
    session = time.perf_counter()
    window_start_step = state.step

    def flush() -> None:
        """Host sync: check finiteness, record a history row, advance the progress bar."""
        nonlocal pending, window_start_step
        if not pending:
            return
        seconds = window.lap()
        losses = torch.stack([terms["loss"].float() for terms in pending]).cpu()  # (n,)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = window_start_step + int(bad[0]) + 1
            kept = (
                f"the last good checkpoint (step {last_good}) is kept" if last_good else "no checkpoint yet"
            )
            raise NonFiniteLoss(
                f"{model.name}: non-finite loss at step {step}; training diverged ({kept}); try a lower --lr"
            )
        images = len(pending) * cfg.batch_size
        if window_start_step >= options.warmup_steps:
            state.timed_images += images
            state.timed_seconds += seconds
            state.timed_steps += len(pending)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "split": "train",
            "wall_time_s": state.wall_time_s + time.perf_counter() - session,
            "images_per_s": images / seconds if seconds > 0 else None,
        }
        for key in pending[0]:
            row[key] = float(torch.stack([terms[key].float() for terms in pending]).mean())
        state.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}", refresh=False)
        bar.update(len(pending))
        pending = []
        window_start_step = state.step

    last_good = state.step

    def write_checkpoint() -> None:
        nonlocal last_good, session
        flush()
        state.wall_time_s += time.perf_counter() - session
        session = time.perf_counter()
        save_checkpoint(checkpoint, model, optimizers, state, identity)
        if history is not None:
            write_history(history, state.history)
        last_good = state.step
        window.lap()  # checkpoint I/O is not training time

    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not options.progress,
        unit="step",
        desc=f"{model.name} s{seed}",
        dynamic_ncols=True,
        leave=False,
    )
    interrupted = _StopFlag()
    try:
        with interrupted, PeakMemory(options.device) as memory:
            while state.step < total_steps:
                order = epoch_order(len(data.train), seed, state.epoch, options.device)
                order = order[state.batch_in_epoch * cfg.batch_size :]
                for x in batches(data.train, cfg.batch_size, order, drop_last=True):
                    with autocast(options.device, options.precision):
                        pending.append(model.train_step(x, optimizers))
                    state.step += 1
                    state.batch_in_epoch += 1
                    if state.step % cfg.log_every == 0:
                        flush()
                    if state.step % cfg.checkpoint_every == 0:
                        write_checkpoint()
                    if interrupted.set:
                        write_checkpoint()
                        raise TrainingInterrupted(f"interrupted at step {state.step}; checkpoint saved")
                    if state.step >= total_steps:
                        break
                flush()
                epoch_done = state.batch_in_epoch >= steps_per_epoch
                if epoch_done or state.step >= total_steps:
                    if state.validated_epoch < state.epoch:
                        val = validate(model, val_images, cfg.batch_size, options)
                        state.history.append(
                            {
                                "step": state.step,
                                "epoch": state.epoch,
                                "split": "val",
                                "wall_time_s": state.wall_time_s + time.perf_counter() - session,
                                **val,
                            }
                        )
                        state.validated_epoch = state.epoch
                        window.lap()  # validation is not training time
                    if epoch_done:
                        state.epoch += 1
                        state.batch_in_epoch = 0
                    write_checkpoint()
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        raise UserError(
            f"{model.name}: out of memory at batch size {cfg.batch_size} on {options.device}; "
            f"lower --batch-size (e.g. --batch-size {max(1, cfg.batch_size // 2)})"
        ) from None
    finally:
        bar.close()
    synchronize(options.device)
    summary = {
        "train_images_per_s": state.timed_images / state.timed_seconds if state.timed_seconds > 0 else None,
        "steps_timed": state.timed_steps,
        "warmup_steps": options.warmup_steps,
        "peak_memory_mb": memory.peak_mb if state.step > 0 else None,
        "memory_kind": memory.kind,
        "wall_time_s": state.wall_time_s,
        "batch_size": cfg.batch_size,
        "precision": options.precision,
        "device_name": device_name(options.device),
        "steps": state.step,
    }
    return state, summary
