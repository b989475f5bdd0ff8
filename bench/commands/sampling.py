"""A trained run's model, loaded for use (its evaluation weights, no identity check), and
``bench sample``: N samples of it, drawn with its own sampler, written to a .npz or a PNG grid.
``bench eval`` loads runs through ``load_run`` too."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genbench.bench.engine.checkpoint import load_weights
from genbench.bench.engine.device import resolve_device
from genbench.bench.engine.steplog import PLAIN_PROGRESS_EVERY_S
from genbench.bench.engine.timing import available_memory_bytes
from genbench.bench.planning.plan import RunPlan, read_run
from genbench.bench.record.results import CHECKPOINT
from genbench.bench.record.sample_files import output_format, write_samples
from genbench.core import files
from genbench.core.errors import UsageError, UserError
from genbench.core.log import progress_shown
from genbench.metrics.base import sample_batch
from genbench.models.base import GenerativeModel, get_model_class
from genbench.models.plugins import construct, recorded_family

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    run_dir: Path
    config: dict[str, Any]  # config.json
    plan: RunPlan
    model: GenerativeModel  # in eval mode on the device, holding the weights the run was evaluated with
    state: dict[str, Any]  # the checkpoint's loop state (step, timing, peak memory, finished)
    checkpoint: Path


def read_checked(run_dir: Path) -> tuple[dict[str, Any], RunPlan]:
    """``read_run``, after naming two cases it would call a broken config.json: a re-evaluation
    folder, and a run of a family that is not available here (a plug-in not installed)."""
    path = run_dir / "config.json"
    config = files.read_json(path) if path.is_file() else None
    if isinstance(config, dict) and isinstance(config.get("model"), str):
        _check_family(run_dir, config)
    return read_run(run_dir)


def _check_family(run_dir: Path, config: dict[str, Any]) -> None:
    if isinstance(config.get("source"), dict) and config["source"].get("kind") == "external":
        raise UserError(f"{run_dir} holds the scores of external samples (bench eval --samples), not a run")
    if config.get("evaluation_of"):
        original = run_dir.parent / str(config["evaluation_of"])
        raise UserError(f"{run_dir} is a re-evaluation (bench eval) of {original}; pass that run folder")
    origin = config.get("model_origin")
    try:
        recorded_family(config)
    except KeyError as exc:
        raise UserError(
            f"{run_dir} is a run of model family {config['model']!r} ({origin or 'origin unknown'}), which "
            f"is not available here: {exc.args[0]}"
        ) from None


def load_run(run_dir: Path, device: torch.device, model_config: Any = None) -> LoadedRun:
    """The run's model with its checkpoint's evaluation weights (EMA where the run kept them), built
    from ``model_config`` when given (the run's own with, e.g., another sampler step count)."""
    run_dir = Path(run_dir)
    config, plan = read_checked(run_dir)
    checkpoint = run_dir / CHECKPOINT
    model = construct(get_model_class(plan.model), model_config or plan.model_config).to(device)
    try:
        state = load_weights(checkpoint, model, expect={"model": plan.model, **plan.dataset.record()})
    except (RuntimeError, KeyError, TypeError) as exc:  # load_state_dict: missing, unexpected, mis-shaped
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {checkpoint} does not fit {plan.model}'s config ({reason})") from None
    model.eval()
    return LoadedRun(run_dir, config, plan, model, state, checkpoint)


def check_mode(model: GenerativeModel, mode: str | None) -> str:
    """The sample mode to use: ``mode``, or the model's default (its first)."""
    modes = model.sample_modes()
    if mode is None:
        return next(iter(modes))
    if mode not in modes:
        raise UsageError(f"--mode {mode}: {model.name} samples with {', '.join(modes)}")
    return mode


def draw(
    model: GenerativeModel, n: int, mode: str, seed: int, batch_size: int, progress: bool = True
) -> Tensor:
    """n samples, uint8 (n, C, H, W) on the CPU, batch i from a generator seeded by (seed, i) (as
    the evaluation draws them: ``metrics.base.sample_batch``). Progress is a bar on a terminal and,
    as `bench run` does, plain lines in a log (stderr not a terminal: no carriage-return frames)."""
    chunks = []
    plain = progress and progress_shown() and not sys.stderr.isatty()  # a log: lines, not bar frames
    last_line = time.monotonic()
    if plain:
        logger.info(f"sampling: {n} images")
    with tqdm(total=n, unit="img", disable=not (progress and progress_shown()) or plain, leave=False) as bar:
        for index, start in enumerate(range(0, n, batch_size)):
            size = min(batch_size, n - start)
            chunks.append(sample_batch(model, index, size, seed, mode, model.device))  # (size, C, H, W)
            bar.update(size)
            if plain and time.monotonic() - last_line >= PLAIN_PROGRESS_EVERY_S:
                last_line = time.monotonic()
                logger.info(f"sampling: {start + size} of {n} images")
    return torch.cat(chunks)


def check_memory(n: int, model: GenerativeModel) -> None:
    """Refuse, before drawing, n samples whose copies (the batches, the joined tensor, the file's
    buffer: three of uint8 (n, C, H, W)) would not fit in the memory available now."""
    need, available = 3 * n * model.dims, available_memory_bytes()
    if available is not None and need > available:
        fits = available // (3 * model.dims)
        raise UserError(
            f"-n {n}: {n} samples of {model.name} need ~{need / 2**20:,.0f} MiB, "
            f"{available / 2**20:,.0f} MiB is available; draw at most {fits} per call (several calls "
            "with other --seed)"
        )


def sample_run(
    run_dir: Path,
    n: int,
    out: Path,
    mode: str | None = None,
    seed: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> str:
    """Write n samples of a run to ``out`` (.npz with "images", or a PNG grid); returns one line
    saying what was written. The seed defaults to the run's, the batch size to its evaluation's on
    this device (batch i is drawn from (seed, i), so the same batches give the evaluation's images)."""
    output_format(out, n)  # a bad --out fails before the model is loaded
    files.check_output_file(out, "--out")
    if Path(out).resolve().is_relative_to(Path(run_dir).resolve()):
        raise UserError(f"--out {out} is inside the run folder {run_dir}; bench sample never writes there")
    loaded = load_run(run_dir, resolve_device(device))
    check_memory(n, loaded.model)
    mode = check_mode(loaded.model, mode)
    seed = loaded.plan.seed if seed is None else seed
    batch_size = batch_size or loaded.plan.eval_config.sample_batch_size(loaded.model.device)
    images = draw(loaded.model, n, mode, seed, batch_size, progress)
    write_samples(out, images, loaded.model.levels)
    described = loaded.model.sample_modes()[mode]
    how = f"step {loaded.state.get('step')}, mode {mode}" + (f": {described}" if described else "")
    return f"{n} samples of {loaded.run_dir.name} ({how}, seed {seed}) -> {out}"
