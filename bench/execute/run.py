"""Runs: from a request to finished run folders. The CLI parses options and calls ``run_all``;
everything that decides how a run is set up lives here (overrides, precision, determinism,
threads, resume rules, failure aggregation).

run folder: config.json (resolved config and provenance), status.json, history.csv, metrics.json,
samples.png, samples.pt, interpolation.png (latent models), checkpoints/last.pt, and run.lock (pid
and host) while a process runs it.

Under torchrun (or ``bench run --nproc N``, which starts it) every rank runs ``run_all`` on the same
request; rank 0 alone creates run folders and writes their files (``genbench.bench.engine.distributed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genbench.bench.engine import distributed, threads
from genbench.bench.engine.checkpoint import load_checkpoint
from genbench.bench.engine.data import Dataset, DatasetSpec, load_dataset, resolve_data_dir
from genbench.bench.engine.device import compile_choice, prepare_model, resolve_device, resolve_precision
from genbench.bench.engine.evaluate import evaluate, metrics_document, protocol_block
from genbench.bench.engine.ladder import final_rungs, rung_evaluation
from genbench.bench.engine.timing import threads_text
from genbench.bench.engine.train import RunOptions, StopFlag, Trainer, TrainingInterrupted
from genbench.bench.planning.overrides import tag
from genbench.bench.planning.plan import (
    RunPlan,
    RunRequest,
    as_data,
    check_resume_request,
    describe,
    from_data,
    plan_runs,
    read_run,
)
from genbench.bench.planning.settings import RunSettings
from genbench.bench.record import results, tensorboard
from genbench.bench.record.results import CHECKPOINT
from genbench.core import files
from genbench.core.distributed import is_distributed, rank, world_size
from genbench.core.errors import UsageError, UserError
from genbench.metrics.fidelity import check_sample_count, resolve_network
from genbench.metrics.likelihood import check_trained
from genbench.models.base import get_model_class
from genbench.models.plugins import construct

logger = logging.getLogger(__name__)


def start(
    plan: RunPlan,
    options: RunOptions,
    out: Path,
    name: str | None = None,
    overwrite: bool = False,
    data_dir: Path | None = None,
) -> Path:
    """Create the run folder and its config.json; the run itself is ``execute``. ``data_dir`` is
    remembered so that --resume finds the same data without being told again. A folder whose
    config could not be written is left ``failed`` (or ``interrupted``), never ``running``."""
    run_id = results.make_run_id(
        plan.model, plan.profile, plan.seed, name, plan.dataset.id_part(), tag(plan.overrides)
    )
    run_dir = results.create_run_dir(out, run_id, overwrite)
    try:
        config = {
            "run_id": run_id,
            **describe(plan, options),
            "created": results.now_iso(),
            "git_commit": results.git_commit(),
            "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            "versions": results.versions(),
            "command": sys.argv,
        }
        files.write_json(run_dir / "config.json", config)
        results.set_status(run_dir, "running")
    except KeyboardInterrupt:
        _abandon(run_dir, "interrupted", "interrupted before training started; start the run again")
        raise
    except BaseException as exc:
        _abandon(run_dir, "failed", _reason(exc))
        raise
    return run_dir


def _abandon(run_dir: Path, status: str, reason: str) -> None:
    """A run folder whose start failed: its final status, or, where none could be written (a full
    disk), no folder at all rather than an empty one that is not a run."""
    _record(run_dir, status, reason)
    if not (run_dir / "status.json").exists():
        for leftover in [run_dir / "config.json", *run_dir.glob(".*.tmp")]:  # ours, just written
            leftover.unlink(missing_ok=True)
        for folder in [run_dir / "checkpoints", run_dir]:  # as create_run_dir made them, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _record(run_dir: Path, status: str, reason: str | None) -> None:
    """Write status.json on the way out of an error: a status that cannot be written (a full disk)
    must not hide the error that is being reported."""
    with contextlib.suppress(UserError, OSError):
        results.set_status(run_dir, status, reason)


def _build_trainer(
    plan: RunPlan, data: Dataset, options: RunOptions, run_dir: Path, cache_dir: Path | None
) -> Trainer:
    """The run's model (seeded weight init, compiled where the family's break-even says so, the
    choice recorded in the train summary) and the loop that trains it."""
    torch.manual_seed(plan.seed)  # weight init
    cls = get_model_class(plan.model)
    compiled, _ = compile_choice(cls, options.device, plan.train_config, options.compile)
    options = dataclasses.replace(options, compile=compiled)  # the train summary records it
    model = prepare_model(construct(cls, plan.model_config), options.device, compiled)
    return Trainer(
        model,
        data,
        plan.train_config,
        plan.seed,
        options,
        run_dir / CHECKPOINT,
        plan.identity(),
        history=run_dir / "history.csv",
        rung_evaluation=rung_evaluation(data, plan.eval_config, options.device, plan.seed, cache_dir),
    )


def execute(
    run_dir: Path,
    data: Dataset,
    options: RunOptions,
    resume: bool = False,
    cache_dir: Path | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Train (or continue) and evaluate the run in ``run_dir`` under its lock; returns metrics.json's
    content. status.json ends as done, failed (with the reason) or interrupted (with the resume
    command). ``stop``: the caller's signal flag (default: one for this call)."""
    config, plan = read_run(run_dir)
    checkpoint = run_dir / CHECKPOINT
    writer = rank() == 0  # under torchrun every rank trains and evaluates; rank 0 alone writes
    with results.run_lock(run_dir) if writer else contextlib.nullcontext(), contextlib.ExitStack() as stack:
        stop = stop if stop is not None else stack.enter_context(StopFlag())
        trainer = None
        try:
            stop.phase = "starting"
            if writer:
                results.set_status(run_dir, "running")
            # An interrupted or failed run that never wrote a checkpoint starts from step 0.
            ckpt = load_checkpoint(checkpoint, plan.identity()) if resume and checkpoint.exists() else None
            trainer = _build_trainer(plan, data, options, run_dir, cache_dir)
            model = trainer.model
            stop.phase = "training"
            state, summary = trainer.run(ckpt, stop)
            stop.phase = "evaluation"
            if stop.set:  # a signal during the last checkpoint write
                raise KeyboardInterrupt
            if writer:
                results.set_status(run_dir, "running", "evaluating; training is complete and checkpointed")
            entries = evaluate(
                model, data, plan.eval_config, options.device, plan.seed, summary,
                run_dir if writer else None, cache_dir, progress=options.progress,
            )  # fmt: skip
            check_trained(entries, model)  # worse than a uniform coder: failed, like a diverged loss
            stop.phase = "writing results"
            protocol = protocol_block(
                data, plan.eval_config, plan.profile, options.device, options.precision,
                time_budget_s=plan.train_config.time_budget_s, processes=world_size(),
                compute_budget=plan.train_config.compute_budget, overrides=plan.overrides,
            )  # fmt: skip
            ladder = state.ladder + final_rungs(trainer, plan.eval_config, entries)  # the last rung's
            report = metrics_document(config["run_id"], model, plan.seed, protocol, entries, ladder)
            if writer:
                files.write_json(run_dir / "metrics.json", report)
                results.set_status(run_dir, "done")
        except TrainingInterrupted as exc:
            if writer:
                _record(run_dir, "interrupted", str(exc))
            raise TrainingInterrupted(f"{exc}; resume with: bench run --resume {run_dir}") from None
        except KeyboardInterrupt:
            if not checkpoint.exists():
                held = "no checkpoint yet"
            elif trainer is not None and stop.phase != "starting":
                held = f"the checkpoint holds step {trainer.last_good}"
            else:
                held = "the checkpoint is kept"
            reason = f"interrupted ({stop.signal or 'SIGINT'}) during {stop.phase}; {held}"
            if writer:
                _record(run_dir, "interrupted", reason)
            raise TrainingInterrupted(f"{reason}; resume with: bench run --resume {run_dir}") from None
        except BaseException as exc:
            if writer:
                _record(run_dir, "failed", _reason(exc))
            raise
    return report


def budget_line(report: dict[str, Any]) -> str | None:
    """For a run its time budget ended: the steps it reached and how to repeat it without a clock."""
    steps = report["metrics"].get("steps") or {}
    protocol = steps.get("protocol") or {}
    if protocol.get("stopped_by") != "time budget":
        return None
    return (
        f"{report['run_id']}: the {protocol['time_budget_s']:g} s time budget ended training after "
        f"{steps['value']:.0f} steps ({protocol['stopped_at_s']:.1f} s); --max-steps {steps['value']:.0f} "
        "repeats it on any machine"
    )


def summary_keys(protocol: dict[str, Any]) -> tuple[str, ...]:
    """The metrics.json keys shown in the one line printed per finished run, in order: the
    likelihood in the unit the protocol's literature uses (nats per image at 2 levels, bits/dim
    otherwise), reconstruction, FID and IS with the protocol's first feature network, speeds."""
    likelihood = ("nll_nats", "iwae_nats") if protocol.get("levels") == 2 else ("bpd", "iwae_bpd")
    networks = list(protocol.get("feature_networks") or ())
    quality = (f"fid_{networks[0]}", f"is_{networks[0]}") if networks else ()
    return (*likelihood, "recon_mse", *quality, "train_images_per_s", "sample_images_per_s")


def summary_line(report: dict[str, Any]) -> str:
    """One line per finished run for the terminal, each number with its protocol."""
    m = report["metrics"]
    parts = []
    for key in summary_keys(report["protocol"]):
        entry = m.get(key)
        if entry is None or entry["value"] is None:
            continue
        p = entry["protocol"]
        context = [
            f"{k}={p[k]}" for k in ("n_images", "n_samples", "feature_network", "sample_mode") if p.get(k)
        ]
        if entry.get("estimator"):
            context.insert(0, entry["estimator"])
        mark = "<= " if entry.get("kind") in ("bound", "estimate") else ""
        unit = entry["unit"] if entry["unit"] != "-" else ""
        stderr = f" ± {entry['stderr']:.2g}" if entry.get("stderr") else ""
        parts.append(
            f"{entry['label']} {mark}{entry['value']:.4g}{stderr} {unit}".rstrip()
            + (f" ({', '.join(context)})" if context else "")
        )
    return (
        f"{report['run_id']}: "
        + " | ".join(parts)
        + f" [seed {report['seed']}, {report['protocol']['device']}]"
    )


def request_data(request: RunRequest) -> dict[str, Any]:
    """The request as JSON data, for the workers `bench run --nproc N` starts."""
    return as_data(request)


def request_from_data(values: dict[str, Any]) -> RunRequest:
    return _with_paths(RunRequest, {**values, "settings": _with_paths(RunSettings, values["settings"])})


def _with_paths(cls: type, values: dict[str, Any]):
    """``from_data``, with the fields typed Path made Paths again."""
    hints = typing.get_type_hints(cls)
    paths = {n for n, hint in hints.items() if Path in (hint, *typing.get_args(hint))}
    return from_data(cls, {k: Path(v) if k in paths and v is not None else v for k, v in values.items()})


def request_from_environment() -> RunRequest:
    """The request `bench run --nproc N` handed its workers (``bench run-worker``)."""
    if distributed.ENV_REQUEST not in os.environ:
        raise UsageError("bench run-worker is started by `bench run --nproc N`; run that instead")
    return request_from_data(json.loads(os.environ[distributed.ENV_REQUEST]))


def run_all(request: RunRequest, echo: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """Plan, then train and evaluate every (model, seed) of the request (or continue one run).
    One failed run does not stop the others; the failures are reported together at the end.
    Every option is checked before any folder is created; a --dry-run checks them too.

    Under torchrun every rank runs this, in the process group it sets up; `--nproc N` outside
    torchrun checks the request here, then starts torchrun with N workers that run it."""
    with distributed.process_group(_device(request)):
        return _run_all(request, echo if echo is not None and rank() == 0 else _quiet)


def _quiet(*args, **kwargs) -> None:
    """The echo of ranks other than 0 (one line per run, from rank 0), and of a program's call."""


def _device(request: RunRequest) -> torch.device:
    if distributed.launched_world() > 1:
        return distributed.rank_device(request.settings.device)
    return resolve_device(request.settings.device)


def _processes(request: RunRequest) -> int:
    world = distributed.launched_world()
    if world > 1 and request.nproc not in (1, world):
        raise UsageError(f"--nproc {request.nproc}: torchrun started {world} processes; drop --nproc")
    return max(world, request.nproc)


def _threads(
    settings: RunSettings, device: torch.device, config: dict[str, Any] | None, share: int | None = None
) -> dict[str, Any] | None:
    """Set torch's CPU threads for the next run (bench.engine.threads); its record for config.json.
    ``share``: the processes of the run (default: those torchrun started)."""
    if device.type != "cpu":
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        return None
    recorded = ((config or {}).get("threads") or {}).get("threads")
    choice = threads.decide(settings.threads, recorded, share=share or distributed.launched_world())
    return threads.apply(choice).record()


@dataclasses.dataclass(frozen=True)
class _Targets:
    """The runs a request makes: each plan with its folder (None: to be created), the data folder,
    and the resumed run's config.json (None when starting runs)."""

    runs: list[tuple[RunPlan, Path | None]]
    data_dir: Path | None
    config: dict[str, Any] | None = None

    @property
    def plans(self) -> list[RunPlan]:
        return [p for p, _ in self.runs]


def _targets(request: RunRequest) -> _Targets:
    """The resumed run, or the planned new ones (--out checked first)."""
    if request.resume is None:
        results.check_writable_folder(request.out, "--out")
        return _Targets([(p, None) for p in plan_runs(request)], request.settings.data_dir)
    check_resume_request(request)
    config, resumed = read_run(request.resume)
    _check_resumable(request.resume, request.reevaluate)
    results.check_not_in_use(request.resume)  # before loading data; execute takes the lock
    data_dir = request.settings.data_dir
    if data_dir is None and config.get("data_dir") and Path(config["data_dir"]).is_dir():
        data_dir = Path(config["data_dir"])
    return _Targets([(resumed, request.resume)], data_dir, config)


def _run_all(request: RunRequest, echo: Callable[..., None]) -> list[dict[str, Any]]:
    device = _device(request)
    processes = _processes(request)
    distributed.check_launch(device, processes)
    options = RunOptions(
        device=device,
        precision=resolve_precision(request.settings.precision, device),
        compile=request.settings.compile,
        progress=request.progress,
        processes=processes,
        tensorboard=request.tensorboard,
    )
    if request.tensorboard:
        tensorboard.require()  # before any run folder is written
    targets = _targets(request)
    results.check_writable_folder(request.cache, "--cache-dir")  # OUT/.cache unless given
    _check_plans(targets.plans)
    for p in targets.plans:
        distributed.check_batch_size(p.train_config.batch_size, processes)
        logger.debug(f"planned {p.model} seed {p.seed} ({p.profile}, {p.dataset.name}), --set {p.overrides}")
    if request.dry_run:
        if request.settings.batch_size is not None:  # the profiles' own batch sizes fit every dataset
            _check_fits_local_data(targets.plans[0].dataset, targets.data_dir, targets.plans)
        chosen = _threads(request.settings, device, targets.config, share=processes)  # what each rank takes
        options = dataclasses.replace(options, threads=chosen)
        echo(json.dumps([describe(p, options) for p in targets.plans], indent=2))
        return []
    if processes > distributed.launched_world():  # --nproc N: the request is checked, start the workers
        distributed.launch(processes, request_data(request))
        return []
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    with distributed.rank_zero_first():  # one rank reads (or downloads) the files first
        data = load_dataset(targets.plans[0].dataset, targets.data_dir, device=device)
    _check_fits(targets.plans, len(data.train))
    return _run_targets(request, targets, data, options, echo)


def _run_targets(
    request: RunRequest, targets: _Targets, data: Dataset, options: RunOptions, echo: Callable[..., None]
) -> list[dict[str, Any]]:
    """Each run in turn: create its folder (rank 0), then train, evaluate and write it."""
    reports, failures = [], []
    with StopFlag() as stop:  # from here on every exit leaves each started run's status final
        began = time.monotonic()
        for i, (run_plan, run_dir) in enumerate(targets.runs):
            options = dataclasses.replace(
                options, threads=_threads(request.settings, options.device, targets.config)
            )
            run_dir = run_dir or distributed.on_rank_zero(
                lambda run_plan=run_plan, options=options: start(
                    run_plan, options, request.out, request.name, request.overwrite,
                    data_dir=resolve_data_dir(targets.data_dir),
                )
            )  # fmt: skip
            where = str(options.device)
            if options.threads:
                where += f", {threads_text(options.threads['threads'])}"
                note = threads.ThreadChoice(**options.threads).note()
                if note:
                    logger.warning(note)
            logger.info(
                f"{_position(i, len(targets.runs), time.monotonic() - began)}{run_plan.model} seed "
                f"{run_plan.seed} ({run_plan.profile}) on {where} -> {run_dir}"
            )
            try:
                report = execute(
                    run_dir,
                    data,
                    options,
                    resume=run_dir == request.resume,
                    cache_dir=request.cache,
                    stop=stop,
                )
            except UserError as exc:
                # Under torchrun a failure may be one rank's (its lock, its disk): the others cannot
                # go on to the next run without it, so the first failure ends the command.
                if isinstance(exc, TrainingInterrupted) or len(targets.runs) == 1 or is_distributed():
                    raise
                failures.append(f"{run_dir.name}: {exc}")  # one diverged model does not stop the others
                logger.error(f"error: {exc}")
                continue
            echo(summary_line(report))
            if budget_line(report):
                logger.info(budget_line(report))
            reports.append(report)
    if failures:
        raise UserError(f"{len(failures)} of {len(targets.runs)} runs failed: " + "; ".join(failures))
    return reports


def _position(i: int, n: int, elapsed: float) -> str:
    """ "[run 2 of 5, 1m40s elapsed, ~6m40s to go] " for the run about to start (the expected rest
    from the mean of the runs so far); "" for a single run."""
    if n == 1:
        return ""
    clock = lambda s: f"{int(s) // 60}m{int(s) % 60:02d}s"  # noqa: E731
    rest = f", ~{clock(elapsed / i * (n - i))} to go" if i else ""
    return f"[run {i + 1} of {n}, {clock(elapsed)} elapsed{rest}] "


def _check_resumable(run_dir: Path, reevaluate: bool) -> None:
    """A done run keeps its metrics.json unless the user asks to evaluate it again."""
    if results.read_status(run_dir) == "done" and not reevaluate:
        raise UserError(
            f"{run_dir} is done; pass --reevaluate to evaluate it again under its own protocol (rewrites "
            f"metrics.json), or use `bench eval {run_dir}` for another protocol"
        )


def _check_plans(plans: list[RunPlan]) -> None:
    """What can be refused before data is loaded: seeds the RNGs take, and sample counts the
    profile's feature networks can compute FID from (as evaluation would, after training)."""
    for p in plans:
        if not 0 <= p.seed < results.SEED_LIMIT:
            raise UsageError(f"seed {p.seed} is out of range; seeds are integers 0..{results.SEED_LIMIT - 1}")
        config = p.eval_config
        for net in config.feature_networks:
            network = resolve_network(net, config.inception_weights)
            try:
                check_sample_count(config.n_samples, network, config.allow_few_samples)
            except UserError as exc:
                raise UsageError(f"--n-samples {config.n_samples}: {exc}") from None


def _check_fits(plans: list[RunPlan], n_train: int) -> None:
    for p in plans:
        if p.train_config.batch_size > n_train:
            raise UsageError(
                f"--batch-size {p.train_config.batch_size} exceeds the {n_train} training images of "
                f"{p.dataset.name}; lower it"
            )


def _check_fits_local_data(dataset: DatasetSpec, data_dir: Path | None, plans: list[RunPlan]) -> None:
    """--dry-run: check --batch-size against the dataset when it is on disk (never downloading)."""
    try:
        data = load_dataset(dataset, data_dir, download_missing=False)
    except UserError as exc:
        logger.warning(f"note: --batch-size not checked against the training set: {exc}")
        return
    _check_fits(plans, len(data.train))
