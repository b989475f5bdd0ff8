"""Checkpoints: everything needed to continue a run exactly where it stopped, read back safely.

A checkpoint holds the model, the optimizers, the EMA weights, the loop's state (step, epoch,
position in the epoch, history, timing) and the RNG states of the CPU and of the training device
only (a run resumed on a machine with fewer GPUs must still load it). It is written through the
suite's atomic writer and read with ``weights_only=True``, so loading it cannot run code.

In a data-parallel run rank 0 writes it (every rank holds the same weights, optimizer states and
loop state; batch-updated buffers are rank 0's, as validation uses them) and every rank loads it;
training noise is reseeded per step and rank (``bench.engine.distributed.seed_step``), so rank 0's RNG
states are all a resume needs, with any number of processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import UserError
from genbench.core.files import open_regular, save_torch

CHECKPOINT_FORMAT = "genbench-checkpoint-v2"


@dataclasses.dataclass
class LoopState:
    """The loop's position and bookkeeping; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already done
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timed_images: int = 0  # images and seconds after warm-up, for the throughput figure
    timed_seconds: float = 0.0
    timed_steps: int = 0
    wall_time_s: float = 0.0
    validated_epoch: int = -1  # last epoch whose end-of-epoch validation ran
    peak_memory_mb: float | None = None  # the highest peak of any session that trained
    finished: bool = False  # training complete: a resume goes straight to evaluation
    budget_stop_s: float | None = None  # the loop's wall time when the time budget ended training
    # the rungs evaluated so far (bench.engine.ladder)
    ladder: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _device_rng(device: torch.device) -> torch.Tensor | None:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return None


def save_checkpoint(
    path: Path, model, optimizers, ema, state: LoopState, identity: dict, device: torch.device
) -> None:
    save_torch(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "identity": identity,
            "model": model.state_dict(),
            "optimizers": optimizers.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "state": dataclasses.asdict(state),
            "rng_cpu": torch.get_rng_state(),
            "rng_device": _device_rng(device),
        },
    )


def _read(path: Path, missing: str, then: str) -> dict:
    """A genbench checkpoint read safely (weights_only; a FIFO refused, not read forever), or one
    line: ``missing`` when there is none, ``then`` (what to do) after any other problem."""
    try:
        with open_regular(path) as f:
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}: {missing}") from None
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} is truncated or not a genbench checkpoint ({type(exc).__name__}){then}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint (an older genbench wrote it?){then}"
        )
    return ckpt


def load_checkpoint(path: Path, identity: dict) -> dict:
    """Read a checkpoint safely (weights_only) and check it belongs to this run."""
    ckpt = _read(
        path,
        "the run stopped before its first checkpoint; start it again",
        "; delete it and start the run again",
    )
    if ckpt.get("identity") != identity:
        theirs = ckpt.get("identity") or {}
        diff = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        raise UserError(
            f"checkpoint {path} belongs to a different run (differs in {', '.join(diff)}); "
            "resume with the run's own config"
        )
    return ckpt


def restore(ckpt: dict, model, optimizers, ema, device: torch.device) -> LoopState:
    """Load a checkpoint's states into a model already on ``device`` and its optimizers."""
    model.load_state_dict(ckpt["model"])
    optimizers.load_state_dict(ckpt["optimizers"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if ckpt.get("rng_device") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng_device"], device)
    return LoopState(**ckpt["state"])


def load_weights(path: Path, model, prefer_ema: bool = True, expect: dict | None = None) -> dict[str, Any]:
    """Load a run's checkpoint weights into ``model`` for evaluation or sampling, without checking
    the whole run identity (another protocol may change the model's sampler): the EMA weights where
    the run kept them (what it was evaluated with). ``expect``: identity fields (family, dataset)
    the checkpoint must match, so that a checkpoint copied from another run is not scored as this
    one's. Returns the checkpoint's loop state."""
    ckpt = _read(path, "the run has not written one yet", "")
    theirs = ckpt.get("identity") if isinstance(ckpt.get("identity"), dict) else {}
    for key, value in (expect or {}).items():
        if key in theirs and theirs[key] != value:
            raise UserError(
                f"checkpoint {path} is of {key} {theirs[key]!r}, but its run folder's config.json says "
                f"{value!r}: it would be scored as the wrong {key}; evaluate the run folder it came from"
            )
    ema = ckpt.get("ema")
    model.load_state_dict(ema["shadow"] if prefer_ema and ema is not None else ckpt["model"])
    return ckpt["state"]
