"""`bench sweep`: a grid of runs (model x seed x profile x dataset x --grid points) as one job each,
submitted through submitit to Slurm (one job array, its parallelism capped) or to this machine
(submitit's local executor, a few jobs at a time), all writing into one results folder that
`bench report` reads.

Each run of a sweep has a fixed id, ``<model>[-<dataset>]-<profile>-s<seed>[-<set tag>]-<sweep>-<dataset>``
(the first dataset where it is not mnist and the tag of its --set and --grid fields where it has
some, as in every run id), so a sweep
submitted again finds its runs: a done run is skipped (not submitted), an interrupted or failed one
is resumed from its checkpoint (``bench run --resume``), a missing one is started, and one that a
live process holds is left alone. A job decides again when it starts, so a run finished while the
job waited in the queue is not redone. A run whose config.json differs from what the sweep asks now
(another --max-steps, say) is refused: a sweep name stands for one set of settings.

    RESULTS/<run id>/                 ordinary run folders
    RESULTS/.sweep/<sweep>/sweep.json the grid and every submission: run id -> its jobs
    RESULTS/.sweep/<sweep>/jobs/      submitit's logs and pickles, <job id>_*

Near a job's time limit (--time) submitit has Slurm (or its local executor) send SIGUSR2; the run
stops as on a SIGTERM (the step finishes, a checkpoint is written) and submitit requeues the job,
which resumes the run. A job killed outright on a Slurm node leaves its run.lock behind, naming a
host this machine cannot ask: delete that lock once `squeue` no longer lists the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd
import submitit
from submitit.core.job_environment import JobEnvironment

from genbench.bench.engine.data import DEFAULT_DATASET, get_dataset_spec, resolve_data_dir
from genbench.bench.engine.device import resolve_device
from genbench.bench.engine.train import TrainingInterrupted
from genbench.bench.execute.run import run_all
from genbench.bench.execute.sweep_record import LAUNCHERS, SweepRecord, sweep_dir
from genbench.bench.planning import overrides as typed
from genbench.bench.planning.plan import RunRequest, as_data, plan, read_run
from genbench.bench.planning.settings import EVAL, TRAIN, RunSettings
from genbench.bench.record import results
from genbench.core import log
from genbench.core.errors import UsageError, UserError
from genbench.models.base import get_model_class

logger = logging.getLogger(__name__)
POLL_S = 1.0  # how often the local launcher looks at its jobs
STOP_WAIT_S = 300.0  # how long an interrupted local sweep waits for its runs to checkpoint


class SweepInterrupted(UserError):
    """Ctrl-C or SIGTERM stopped a local sweep; its runs are resumable."""

    exit_code = 130


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    model: str
    profile: str
    seed: int
    dataset: str
    sweep: str
    sets: tuple[str, ...] = ()  # the sweep's --set and this point's --grid values

    @property
    def name(self) -> str:
        """The run name: the sweep's and the dataset's, so a sweep's run ids keep their form."""
        return f"{self.sweep}-{self.dataset}"

    @property
    def run_id(self) -> str:
        family = get_model_class(self.model)
        overrides = typed.resolve(family.name, family.Config, self.sets)
        return results.make_run_id(
            self.model,
            self.profile,
            self.seed,
            self.name,
            get_dataset_spec(self.dataset).id_part(),
            typed.tag(overrides),
        )


@dataclasses.dataclass(frozen=True)
class SweepRequest:
    """What the user asked of `bench sweep`, as parsed by the CLI: the grid, the settings every run
    of it is made with (its dataset is each cell's), and how its jobs are submitted."""

    models: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    profiles: tuple[str, ...] = ("quick",)
    datasets: tuple[str, ...] = (DEFAULT_DATASET,)
    settings: RunSettings = RunSettings()
    # --grid axes, each its points as --set values: (("model.latent_dim=8", "model.latent_dim=16"), ...)
    grid: tuple[tuple[str, ...], ...] = ()
    out: Path = Path("results")
    sweep: str = "sweep"
    launcher: str = "auto"
    max_parallel: int | None = None  # None: 1 job at a time locally, Slurm's array uncapped
    partition: str | None = None
    time_min: int = 60  # each job's time limit (Slurm's --time; the local executor's timeout too)
    gpus_per_job: int | None = None  # None: 1 locally when CUDA is visible, else 0; 0 on Slurm
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    dry_run: bool = False

    def run_request(self, cell: Cell, **changes: Any) -> RunRequest:
        """The `bench run` request that makes ``cell``."""
        settings = dataclasses.replace(self.settings, dataset=get_dataset_spec(cell.dataset), sets=cell.sets)
        return RunRequest(
            models=(cell.model,), profile=cell.profile, seeds=(cell.seed,), out=self.out, name=cell.name,
            settings=settings, **changes,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunJob(submitit.helpers.Checkpointable):
    """The callable each job runs: one run of the grid, started, resumed or skipped as its folder
    says when the job starts. Picklable; paths are absolute (a cluster job starts elsewhere)."""

    cell: Cell
    request: SweepRequest
    log_level: int = logging.INFO  # the submitting command's (-q, -v): the job's log shows the same lines

    def __call__(self) -> dict[str, str]:
        with _timeout_stops_run() as timed_out, _showing_log(self.log_level):
            try:
                return self.run()
            except TrainingInterrupted:
                timed_out.requeue()  # submitit: checkpoint() (this same job) is requeued, then exits
                raise

    def run(self) -> dict[str, str]:
        out = self.request.out
        run_dir = out / self.cell.run_id
        action = decide(run_dir)
        if action == "skip":
            return {"run_id": self.cell.run_id, "action": action}
        if action == "busy":
            results.check_not_in_use(run_dir)  # raises RunInUse naming the holder
            action = "resume"  # released since
        if action == "resume":  # the run keeps its own config: only where and how it runs are given
            request = RunRequest(resume=run_dir, settings=self.request.settings.without_overrides(),
                                 cache_dir=out / ".cache")  # fmt: skip
        else:
            request = self.request.run_request(self.cell, cache_dir=out / ".cache")
        run_all(request, echo=click.echo)
        return {"run_id": self.cell.run_id, "action": action}


@contextlib.contextmanager
def _showing_log(level: int) -> Iterator[None]:
    undo = log.show(level)
    try:
        yield
    finally:
        undo()


class _Timeout:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.frame: Any = None
        self.previous: Any = None

    def requeue(self) -> None:
        if self.signum is not None and callable(self.previous):
            self.previous(self.signum, self.frame)


@contextlib.contextmanager
def _timeout_stops_run() -> Iterator[_Timeout]:
    """submitit warns a job of its time limit with SIGUSR2 and its handler exits at once (a run
    would be cut mid-step and left "failed"). Here the warning becomes a SIGTERM, which the run
    handles by finishing its step and checkpointing; submitit's handler then requeues the job."""
    timeout = _Timeout()
    usr = JobEnvironment._usr_sig()

    def warned(signum, frame) -> None:
        timeout.signum, timeout.frame = signum, frame
        signal.raise_signal(signal.SIGTERM)

    timeout.previous = signal.signal(usr, warned)
    try:
        yield timeout
    finally:
        signal.signal(usr, timeout.previous)


def decide(run_dir: Path) -> str:
    """What a sweep does with a run folder: "start" (none), "skip" (done), "busy" (a live process
    holds it), or "resume" (interrupted, failed, or left running by a process that is gone)."""
    if not os.path.lexists(run_dir):
        return "start"
    if results.read_status(run_dir) == "done":
        return "skip"
    try:
        results.check_not_in_use(run_dir)
    except results.RunInUse:
        return "busy"
    return "resume"


# ---------------------------------------------------------------------------------------------------------
# Submitting


def grid(request: SweepRequest) -> list[Cell]:
    return [
        Cell(model, profile, seed, dataset, request.sweep, sets)
        for profile, dataset, sets, model, seed in itertools.product(
            request.profiles, request.datasets, points(request), request.models, request.seeds
        )
    ]


def points(request: SweepRequest) -> list[tuple[str, ...]]:
    """The --set values of each point of the --grid axes' product (one point, the sweep's --set,
    without axes)."""
    return [request.settings.sets + point for point in itertools.product(*request.grid)]


def resolve_launcher(launcher: str) -> str:
    """auto: slurm where submitit finds Slurm (srun on PATH), else local; slurm elsewhere is refused."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    on_slurm = submitit.SlurmExecutor.affinity() > 0
    if launcher == "auto":
        return "slurm" if on_slurm else "local"
    if launcher == "slurm" and not on_slurm:
        raise UsageError(
            "--launcher slurm: Slurm's srun is not on PATH; submit from a Slurm login node, or use "
            "--launcher local"
        )
    return launcher


def check_request(request: SweepRequest) -> None:
    """Everything `bench run` would refuse, refused before anything is submitted: one dry run per
    (profile, dataset, grid point), and every run name."""
    for cell in grid(request):
        try:
            results.check_run_name(cell.name)
        except ValueError as exc:
            raise UsageError(f"--name {request.sweep}: {exc}") from None
    for profile, dataset, sets in itertools.product(request.profiles, request.datasets, points(request)):
        settings = dataclasses.replace(
            request.settings, device="cpu", dataset=get_dataset_spec(dataset), sets=sets
        )  # plans need no GPU
        dry = RunRequest(
            models=request.models, profile=profile, seeds=request.seeds, settings=settings, out=request.out,
            dry_run=True,
        )  # fmt: skip
        run_all(dry, echo=_silent)


def _silent(*args, **kwargs) -> None:
    """The echo of the dry runs that check a sweep."""


def check_same_settings(request: SweepRequest, cell: Cell, run_dir: Path) -> None:
    """An existing run of the sweep must have been made with the settings asked now."""
    _, existing = read_run(run_dir)
    settings = request.settings
    planned = plan(
        cell.model, cell.profile, cell.seed, settings.overrides(TRAIN), settings.overrides(EVAL),
        dataset=cell.dataset, sets=cell.sets,
    )  # fmt: skip
    differences = [
        f"{part}.{key} {old!r} -> {new!r}"
        for part in ("model_config", "train_config", "eval_config")
        for key, (old, new) in _changed(
            as_data(getattr(existing, part)), as_data(getattr(planned, part))
        ).items()
    ]
    if existing.dataset != planned.dataset:
        differences.append(f"dataset {existing.dataset.name!r} -> {planned.dataset.name!r}")
    if differences:
        raise UserError(
            f"{run_dir} was made with other settings than this sweep asks ({'; '.join(differences)}); "
            f"give this sweep another --name, or remove that run folder"
        )


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def make_executor(request: SweepRequest, launcher: str, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "jobs", cluster=launcher)
    gpus = request.gpus_per_job
    if gpus is None:
        gpus = 1 if launcher == "local" and _cuda_visible() else 0
    parameters: dict[str, Any] = {
        "name": f"genbench-{request.sweep}",
        "timeout_min": request.time_min,
        "gpus_per_node": gpus,  # the local executor hides every GPU from a job that asks for none
        "cpus_per_task": request.cpus_per_job,
        "mem_gb": request.mem_gb,
    }
    if launcher == "slurm":
        parameters |= {"slurm_partition": request.partition, "slurm_array_parallelism": request.max_parallel}
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def submit(request: SweepRequest, echo: Callable[..., None]) -> pd.DataFrame:
    """Check the request, decide each run's action, submit the runs to do, and (local launcher)
    run them to the end. Returns the plan: one row per run with its action and job."""
    launcher = resolve_launcher(request.launcher)
    if launcher == "local" and request.partition is not None:
        raise UsageError("--partition is a Slurm option; drop it, or submit from a Slurm login node")
    if launcher == "local":
        resolve_device(request.settings.device)  # a Slurm job checks its own, on its node
    results.check_writable_folder(request.out, "--out")
    check_request(request)
    out = Path(request.out).resolve()
    data_dir = resolve_data_dir(request.settings.data_dir).resolve()
    request = dataclasses.replace(
        request, out=out, settings=dataclasses.replace(request.settings, data_dir=data_dir)
    )
    cells = grid(request)
    actions = {c.run_id: decide(out / c.run_id) for c in cells}
    for cell in cells:
        if actions[cell.run_id] != "start":
            check_same_settings(request, cell, out / cell.run_id)
    table = pd.DataFrame({"run": list(actions), "action": list(actions.values()), "job": "-"})
    if request.grid:  # which point of the grid each run is
        table.insert(1, "set", [" ".join(c.sets) for c in cells])
    todo = [c for c in cells if actions[c.run_id] in ("start", "resume")]
    if request.dry_run or not todo:
        echo(table.to_string(index=False))
        if not todo:
            logger.info(f"sweep {request.sweep}: nothing to submit (every run is done or in use)")
        return table
    record = SweepRecord.load(sweep_dir(out, request.sweep), request.sweep, out)
    record.add_grid(cells, actions)
    record.save()
    executor = make_executor(request, launcher, record.folder)
    jobs = [RunJob(c, request, logger.getEffectiveLevel()) for c in todo]
    if launcher == "slurm":
        with executor.batch():  # one job array
            handles = [executor.submit(job) for job in jobs]
        for job, handle in zip(jobs, handles, strict=True):
            record.add_job(job.cell.run_id, handle.job_id, launcher, actions[job.cell.run_id])
        record.save()
        table["job"] = [record.last_job(c.run_id) or "-" for c in cells]
        echo(table.to_string(index=False))
        follow = f"bench sweep --status --out {out} --name {request.sweep}"
        logger.info(f"submitted {len(jobs)} jobs to Slurm; follow them with: {follow}")
        return table
    echo(table.to_string(index=False))
    run_locally(executor, jobs, record, request.max_parallel or 1, actions)
    table["job"] = [record.last_job(c.run_id) or "-" for c in cells]
    return table


def run_locally(
    executor: submitit.AutoExecutor,
    jobs: list[RunJob],
    record: SweepRecord,
    max_parallel: int,
    actions: dict[str, str],
) -> None:
    """Keep at most ``max_parallel`` local jobs running until every job has ended. Interrupted
    (Ctrl-C, SIGTERM), it asks its running jobs to stop (each run checkpoints and is left
    interrupted) and waits for them, so the same command submitted again finishes the rest."""
    pending, running = list(jobs), []
    failed: list[str] = []
    try:
        while pending or running:
            for job, handle in [r for r in running if r[1].done()]:
                running.remove((job, handle))
                status = results.read_status(record.out / job.cell.run_id) or "missing"
                logger.info(f"{job.cell.run_id}: {status} (job {handle.job_id})")
                if status != "done":
                    failed.append(f"{job.cell.run_id} ({status}; log: {handle.paths.stderr})")
            while pending and len(running) < max_parallel:
                job = pending.pop(0)
                handle = executor.submit(job)
                record.add_job(job.cell.run_id, handle.job_id, "local", actions[job.cell.run_id])
                record.save()
                running.append((job, handle))
            time.sleep(POLL_S if running else 0)
    except KeyboardInterrupt:
        stop_local_jobs([handle for _, handle in running])
        left = len(pending) + len(running)
        raise SweepInterrupted(
            f"sweep {record.sweep} interrupted with {left} of {len(jobs)} runs unfinished; submit the same "
            "command again to finish them"
        ) from None
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} runs did not finish: " + "; ".join(failed))


def stop_local_jobs(handles: list[Any]) -> None:
    """SIGTERM to each local job's controller, which forwards it to the run (finish the step,
    checkpoint, "interrupted"); a job still alive after STOP_WAIT_S is cancelled."""
    for handle in handles:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(handle.job_id), signal.SIGTERM)  # the local job id is its controller's pid
    deadline = time.monotonic() + STOP_WAIT_S
    while any(not h.done() for h in handles) and time.monotonic() < deadline:
        time.sleep(0.2)
    for handle in handles:
        if not handle.done():
            handle.cancel()
