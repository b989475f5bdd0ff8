"""`bench`: the command line. Usage errors exit 2, runtime errors exit 1, both as one line;
`bench --debug ...` (or GENBENCH_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

try:  # importing torch takes seconds: a Ctrl-C then has nothing to clean up and no traceback to show
    from genbench.bench.commands import cli_tools
    from genbench.bench.engine.data import DEFAULT_DATASET
    from genbench.bench.planning.cli_options import (
        DATASET_NAMES,
        Renamed,
        _load_plugins,
        _parse_grid,
        _parse_models,
        _parse_name,
        _parse_row_names,
        _parse_seeds,
        cache_dir_option,
        dataset_option,
        out_option,
    )
    from genbench.bench.planning.settings import settings_options
    from genbench.bench.record.results import check_writable_folder
    from genbench.core import log
    from genbench.core.errors import UserError
    from genbench.models.base import ALIASES, MODELS, PROFILE_NAMES, model_names
except KeyboardInterrupt:
    print("bench: interrupted while starting", file=sys.stderr)
    raise SystemExit(130) from None


INTERRUPTED = 130  # the shell's convention for a SIGINT


class _Stopped(click.ClickException):
    """A stop the user asked for (Ctrl-C, SIGTERM): reported as "Interrupted ...", not as an error."""

    exit_code = INTERRUPTED

    def show(self, file=None) -> None:
        message = self.format_message()
        line = message[:1].upper() + message[1:] if message.startswith("interrupted") else message
        click.echo(line if line.startswith("Interrupted") else f"Interrupted: {message}", err=True)


logger = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns a UserError into click's one-line error (exit 1 or 2) and a stop (TrainingInterrupted,
    or a Ctrl-C or SIGTERM anywhere else) into one "Interrupted ..." line with exit 130, unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            code = getattr(exc, "exit_code", 1)
            error = _Stopped(str(exc)) if code == INTERRUPTED else click.ClickException(str(exc))
            error.exit_code = code
            raise error from None
        except KeyboardInterrupt as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            raise _Stopped(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'})") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, envvar="GENBENCH_DEBUG", help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr: no progress, no info.")
@click.option("-v", "--verbose", is_flag=True, help="Also debug lines on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """genbench: train and compare generative image models on several datasets under one protocol."""
    if quiet and verbose:
        raise click.UsageError("-q and -v contradict each other; give one")
    ctx.obj = {"debug": debug}
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    ctx.call_on_close(log.show(level))  # progress and info lines (genbench.core.log)


@cli.command()
@click.option(
    "--models",
    callback=_parse_models,
    metavar="NAMES",
    help=f"Comma-separated model names: {', '.join(model_names())}, a plug-in's (bench list), "
    "or package.module:ClassName.",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=None,
    help="Named preset: smoke (seconds, tests), quick (2 CPU cores), full (GPU).  [default: quick]",
)
@click.option("--seeds", callback=_parse_seeds, metavar="0,1,2", help="Comma-separated seeds.  [default: 0]")
@dataset_option("Dataset (its images decide the models' shape and levels).")
@out_option("Folder for run folders.")
@settings_options
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    help="Train each run data-parallel on this many processes (one GPU each; gloo on the CPU), "
    "through torchrun. --batch-size stays the global batch.",
)
@click.option(
    "--name",
    default=None,
    callback=_parse_name,
    help="Run-id suffix instead of a timestamp (letters, digits, ._-).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder of the same id.")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue a stopped run from its last checkpoint.",
)
@click.option(
    "--reevaluate",
    is_flag=True,
    help="With --resume of a done run: evaluate it again (rewrites metrics.json).",
)
@cache_dir_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also write training curves and sample grids to RUN/tensorboard/ (the tensorboard extra).",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved config of each run as JSON and exit.")
def run(models, profile, seeds, out, name, overwrite, resume, reevaluate, cache_dir, progress, tensorboard,
        dry_run, nproc, **settings) -> None:  # fmt: skip
    """Train and evaluate models; one run folder per (model, seed) under OUT."""
    from genbench.bench.execute import run as runs
    from genbench.bench.planning.plan import RunRequest
    from genbench.bench.planning.settings import RunSettings

    request = RunRequest(
        models=models, profile=profile, seeds=seeds, settings=RunSettings.from_options(**settings), out=out,
        name=name, overwrite=overwrite, resume=resume, reevaluate=reevaluate, cache_dir=cache_dir,
        progress=progress, tensorboard=tensorboard, dry_run=dry_run, nproc=nproc,
    )  # fmt: skip
    runs.run_all(request, echo=click.echo)


@cli.command("run-worker", hidden=True)
def run_worker() -> None:
    """One rank of `bench run --nproc N`: torchrun starts it with the parsed request in the environment."""
    from genbench.bench.engine import distributed
    from genbench.bench.execute import run as runs

    distributed.die_with_parent()  # no worker outlives `bench run --nproc N`, not even its SIGKILL
    _load_plugins()
    runs.run_all(runs.request_from_environment(), echo=click.echo)


@cli.command()
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    help="Folder of run folders.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder.  [default: RESULTS/report]",
)
@click.option(
    "--format",
    "formats",
    default="md,csv,latex,html",
    metavar="md,csv,latex,html",
    help="Comma-separated table formats.",
)
@click.option(
    "--models",
    callback=_parse_row_names,
    metavar="NAMES",
    help="Only these rows: model names (aliases allowed) or the names of scored external samples.",
)
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None, help="Only this profile.")
@click.option("--since", type=click.DateTime(), default=None, help="Only runs created at or after this time.")
@click.option("--run", "run_ids", default="", metavar="RUN_IDS", help="Only these comma-separated run ids.")
@click.option("--include-unfinished", is_flag=True, help="Also show runs that are not done.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Training data for the nearest-neighbour panel (skipped when not found; never downloads).",
)
@click.option("--figures/--no-figures", default=True, help="Draw the figures (the slow part of a report).")
def report(
    results_dir, out, formats, models, profile, since, run_ids, include_unfinished, data_dir, figures
) -> None:
    """Tables (md/csv/latex/html), figures and results/report/index.html from finished runs. Run folders
    that cannot be read are skipped with a note on stderr."""
    from genbench.bench import report as reports

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in reports.FORMATS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown format {', '.join(unknown)}; choose from {', '.join(reports.FORMATS)}",
            param_hint="--format",
        )
    check_writable_folder(out or results_dir / "report", "--out")
    result = reports.make_report(
        results_dir,
        out,
        chosen,
        models,
        profile,
        since,
        tuple(r for r in run_ids.split(",") if r),
        include_unfinished,
        data_dir,
        figures,
    )
    click.echo(result.markdown)
    if result.n_skipped:
        logger.info(f"skipped {result.n_skipped} unfinished run(s) (--include-unfinished shows them)")
    for note in result.notes:
        logger.warning(f"note: {note}")
    logger.info(f"wrote {len(result.written)} files; open {result.out_dir / 'index.html'}")


@cli.command("list")
def list_() -> None:
    """Models, their capabilities, profiles and origin (built-in, or the plug-in that brought them);
    metrics and what they need."""
    from genbench.metrics import METRICS
    from genbench.models.base import ORIGINS

    _load_plugins()
    click.echo("models:")
    for name, cls in sorted(MODELS.items()):
        aliases = [a for a, target in ALIASES.items() if target == name]
        capabilities = [
            f"likelihood={cls.likelihood or 'none'}",
            *(flag for flag, has in (("iwae", cls.importance_weighted), ("reconstruct", cls.can_reconstruct),
                                     ("interpolate", cls.can_interpolate)) if has),
        ]  # fmt: skip
        click.echo(
            f"  {name:<10} {' '.join(capabilities):<48} profiles={','.join(cls.profiles)}"
            + (f" aliases={','.join(aliases)}" if aliases else "")
            + f" [{ORIGINS.get(name, 'origin unknown')}]"
        )
    click.echo("metrics:")
    for metric in METRICS.values():
        needs = ",".join(sorted(metric.needs)) or "-"
        click.echo(f"  {metric.name:<18} needs={needs:<20} -> {', '.join(o.key for o in metric.outputs)}")


def _parse_choices(choices: tuple[str, ...]):
    """A click callback: a comma-separated list of ``choices`` -> tuple (None -> ())."""

    def parse(ctx, param, value: str | None) -> tuple[str, ...]:
        if value is None:
            return ()
        items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        if not items or any(v not in choices for v in items):
            raise click.BadParameter(f"{value!r}: comma-separated, from {', '.join(choices)}")
        return items

    return parse


@cli.command()
@click.option("--models", callback=_parse_models, metavar="NAMES", help="Comma-separated model names.")
@click.option("--seeds", callback=_parse_seeds, metavar="0,1,2", help="Comma-separated seeds.  [default: 0]")
@click.option(
    "--profile", "--profiles", "profiles", cls=Renamed, callback=_parse_choices(PROFILE_NAMES),
    metavar="NAMES", help=f"Comma-separated profiles: {', '.join(PROFILE_NAMES)}.  [default: quick]",
)  # fmt: skip
@click.option(
    "--dataset", "--datasets", "datasets", cls=Renamed, callback=_parse_choices(DATASET_NAMES),
    metavar="NAMES",
    help=f"Comma-separated datasets: {', '.join(DATASET_NAMES)}.  [default: {DEFAULT_DATASET}]",
)  # fmt: skip
@out_option("Results folder: the run folders, and the sweep's logs under OUT/.sweep/.")
@click.option(
    "--name", "--sweep", "name", cls=Renamed, default=None, callback=_parse_name,
    help="The sweep's name, in every run id: submitted again, the same name finds the same runs.  "
    "[default: sweep; --status: every sweep]",
)  # fmt: skip
@click.option("--status", "show_status", is_flag=True, help="List each run's state and its job's, then exit.")
@click.option(
    "--launcher", type=click.Choice(["auto", "local", "slurm"]), default="auto",
    help="slurm (a job array), local (jobs on this machine); auto: slurm where srun is on PATH.",
)  # fmt: skip
@click.option(
    "--max-parallel", type=click.IntRange(min=1), default=None,
    help="Jobs running at once.  [default: 1 locally; no cap on Slurm]",
)  # fmt: skip
@click.option("--partition", default=None, help="Slurm partition.")
@click.option(
    "--time", "time_min", type=click.IntRange(min=1), default=60, metavar="MINUTES",
    help="Each job's time limit; near it the run checkpoints and the job is requeued.",
)  # fmt: skip
@click.option(
    "--gpus-per-job", type=click.IntRange(min=0), default=None,
    help="GPUs per job.  [default: 1 locally when CUDA is visible, else 0; 0 on Slurm]",
)  # fmt: skip
@click.option("--cpus-per-job", type=click.IntRange(min=1), default=None, help="CPU cores per job.")
@click.option("--mem", "mem_gb", type=click.IntRange(min=1), default=None, metavar="GB", help="Memory a job.")
@settings_options
@click.option(
    "--grid", "grid_axes", multiple=True, callback=_parse_grid, metavar="SECTION.FIELD=V1,V2,...",
    help="Sweep any config field (repeatable: the product of the axes), each point a run with its --set, "
    "e.g. --grid model.latent_dim=32,64,128; tuples in parentheses: --grid model.channels=(8,16),(16,32).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print what each run would do (start, resume, skip) and exit.")
def sweep(
    models, seeds, profiles, datasets, out, name, show_status, launcher, max_parallel, partition, time_min,
    gpus_per_job, cpus_per_job, mem_gb, dry_run, grid_axes, **settings,
) -> None:  # fmt: skip
    """A grid of runs (models x seeds x profiles x datasets x --grid points) through submitit, one job
    per run, into OUT: Slurm job arrays, or this machine's local executor. Submitted again, a sweep
    skips its done runs, resumes its interrupted ones and starts the rest; `bench report --results
    OUT` gathers them."""
    from genbench.bench.execute import sweep as sweeps
    from genbench.bench.execute import sweep_record
    from genbench.bench.planning.settings import RunSettings

    if show_status:
        click.echo(sweep_record.status(out, name).to_string(index=False))
        return
    if not models:
        raise click.UsageError("--models is required (or --status)")
    request = sweeps.SweepRequest(
        models=models, seeds=seeds or (0,), profiles=profiles or ("quick",),
        datasets=datasets or (DEFAULT_DATASET,),
        settings=RunSettings.from_options(**settings), grid=grid_axes, out=out, sweep=name or "sweep",
        launcher=launcher,
        max_parallel=max_parallel, partition=partition, time_min=time_min, gpus_per_job=gpus_per_job,
        cpus_per_job=cpus_per_job, mem_gb=mem_gb, dry_run=dry_run,
    )  # fmt: skip
    sweeps.submit(request, echo=click.echo)


_TOOLS = (cli_tools.floors, cli_tools.train_classifier, cli_tools.eval_, cli_tools.sample, cli_tools.stats)
for _command in _TOOLS:
    cli.add_command(_command)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main() -> None:
    # A scheduler's SIGTERM ends a command like Ctrl-C (one line, exit 130; a run checkpoints first)
    # instead of killing it with no word and a run folder left "running".
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="bench", auto_envvar_prefix=None)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
