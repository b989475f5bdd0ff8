"""The training loop's step log: the per-step loss terms gathered between host syncs, and at each
sync a divergence check, a history row (the mean over the window, over ranks too), the timed
throughput and the progress bar (or, in a log file, a plain line at most every
PLAIN_PROGRESS_EVERY_S seconds)."""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.bench.engine.checkpoint import LoopState
from genbench.bench.engine.timing import Stopwatch
from genbench.core.distributed import all_reduce_
from genbench.core.errors import UserError
from genbench.core.files import write_text
from genbench.core.log import progress_shown

logger = logging.getLogger(__name__)


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


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


class StepLog:
    """What the loop records between host syncs. ``trainer`` is the Trainer that owns it: its state,
    config, options, optimizers, board and clock."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.pending: list[dict[str, torch.Tensor]] = []  # per-step terms since the last host sync
        self.window = Stopwatch(trainer.options.device)
        self.window_start_step = 0
        self.bar: Any = None
        self.plain_progress = False
        self.last_line = -math.inf

    def open(self, total_steps: int | float, step: int, desc: str) -> None:
        """The progress bar from ``step``; carriage-return frames of a bar are noise in a log file:
        there, plain lines (see ``flush``)."""
        options = self.trainer.options
        self.window_start_step = step
        shown = options.progress and progress_shown()  # -q, or an API call: none
        self.plain_progress = shown and not sys.stderr.isatty()
        self.last_line = -math.inf
        self.bar = tqdm(
            total=total_steps if math.isfinite(total_steps) else None,  # a time budget's: open
            initial=step,
            disable=not shown or self.plain_progress or not self.trainer.rank0,
            unit="step",
            desc=desc,
            dynamic_ncols=True,
            leave=False,
        )

    def flush(self, state: LoopState, wall_time: Callable[[], float]) -> None:
        """Host sync: check finiteness, record a history row, advance the progress bar."""
        if not self.pending:
            return
        t, pending = self.trainer, self.pending
        seconds = self.window.lap()
        keys = list(pending[0])
        stacked = torch.stack([torch.stack([p[k].float() for k in keys]) for p in pending])  # (n, K)
        stacked = all_reduce_(stacked, "mean").cpu()  # the global batch's means: equal slices, equal weights
        self.check_diverged(state, stacked[:, keys.index("loss")])
        images = len(pending) * t.cfg.batch_size
        if self.window_start_step >= t.options.warmup_steps:
            state.timed_images += images
            state.timed_seconds += seconds
            state.timed_steps += len(pending)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "split": "train",
            "wall_time_s": wall_time(),
            "images_per_s": images / seconds if seconds > 0 else None,
            "lr": t.optimizers.optimizers[next(iter(t.optimizers.optimizers))].param_groups[0]["lr"],
        }
        row |= dict(zip(keys, stacked.mean(0).tolist(), strict=True))
        state.history.append(row)
        if t.board is not None:
            t.board.row(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}", refresh=False)
        self.bar.update(len(pending))
        if self.plain_progress and t.rank0 and time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY_S:
            self.last_line = time.monotonic()
            speed = f", {row['images_per_s']:.0f} images/s" if row["images_per_s"] else ""
            total = f"/{t.total_steps}" if math.isfinite(t.total_steps) else ""  # a time budget's: open
            logger.info(
                f"{t.model.name} s{t.seed}: step {state.step}{total}, "
                f"loss {row['loss']:.4g}{speed}, {row['wall_time_s']:.0f} s"
            )
        self.pending = []
        self.window_start_step = state.step

    def check_diverged(self, state: LoopState, losses: torch.Tensor) -> None:
        """Stop on a non-finite loss, or one EXPLODING_FACTOR times the scale training started from:
        the first logged window's mean loss (kept in the history, so a resumed run has the same
        reference), or the first step's loss before any window was logged."""
        first = next((row["loss"] for row in state.history if row.get("split") == "train"), None)
        scale = max(abs(first if first is not None else float(losses[0])), 1.0)
        non_finite = ~torch.isfinite(losses)
        bad = (non_finite | (losses.abs() > EXPLODING_FACTOR * scale)).nonzero()
        if not len(bad):
            return
        index = int(bad[0])
        step = self.window_start_step + index + 1
        last_good, name = self.trainer.last_good, self.trainer.model.name
        kept = f"the last good checkpoint (step {last_good}) is kept" if last_good else "no checkpoint yet"
        if non_finite[index]:
            raise NonFiniteLoss(
                f"{name}: non-finite loss at step {step}; training diverged ({kept}); try a lower --lr"
            )
        raise Diverged(
            f"{name}: loss {float(losses[index]):.3g} at step {step}, over "
            f"{EXPLODING_FACTOR:.0e} times the {scale:.3g} training started from; training diverged "
            f"({kept}); try a lower --lr"
        )
