"""The options and argument parsers that several `bench` commands share, declared once."""

from __future__ import annotations

from pathlib import Path

import click

from genbench.bench.engine.data import DEFAULT_DATASET
from genbench.bench.record.results import SEED_LIMIT, check_run_name
from genbench.models.base import ALIASES, model_names


def _options(*decorators):
    """Several click options as one decorator, so an option shared by commands is declared once."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


# The registries' names, spelled here so that `bench --help` does not import torch-fidelity;
# tests/test_datasets.py checks them against bench.engine.data.DATASETS and metrics.fidelity.NETWORKS.
DATASET_NAMES = ("mnist", "fashion-mnist", "binarized-mnist", "cifar10")
NETWORK_NAMES = ("mnist", "fashion-mnist", "inception")
CLASSIFIER_NAMES = ("mnist", "fashion-mnist")


class DatasetType(click.ParamType):
    """--dataset parsed once into the typed value every request carries (bench.engine.data.DatasetSpec): a
    registry name, or folder:PATH (a folder of PNG/JPEG images, read and checked here)."""

    name = "dataset"

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join(DATASET_NAMES)}|folder:PATH]"

    def convert(self, value, param, ctx):
        from genbench.bench.engine.data import DatasetSpec, get_dataset_spec
        from genbench.core.errors import UserError

        if isinstance(value, DatasetSpec):
            return value
        try:
            return get_dataset_spec(value)
        except UserError as exc:
            self.fail(str(exc), param, ctx)


def dataset_option(help: str, default: str | None = DEFAULT_DATASET, names: tuple[str, ...] | None = None):
    """--dataset: a DatasetSpec (any registry name or folder:PATH), or one of ``names`` as a string."""
    kind = DatasetType() if names is None else click.Choice(names)
    return click.option("--dataset", type=kind, default=default, help=help)


def networks_option(help: str):
    """--network (repeatable): feature networks."""
    return click.option("--network", "networks", type=click.Choice(NETWORK_NAMES), multiple=True, help=help)


class Renamed(click.Option):
    """An option whose spellings after the first are former names: still accepted, not shown."""

    def get_help_record(self, ctx: click.Context):
        opts = self.opts
        self.opts = opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


class _NamedFolder(click.Path):
    """A path that is not empty: click turns "" into Path("."), the current folder, where a download
    would write."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; pass the folder that holds the data", param, ctx)
        return super().convert(value, param, ctx)


def _parse_device(ctx, param, value: str) -> str:
    """auto, or a device of a kind genbench runs on (whether a GPU is there is checked at the start)."""
    import torch

    if value == "auto":
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise click.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise click.BadParameter(f"{value!r}: genbench runs on cpu, cuda, cuda:N or mps (or auto)")
    if device.type == "cuda" and device.index is not None and torch.cuda.is_available():
        if device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise click.BadParameter(f"{value!r}: this machine has {count} CUDA device(s)")
    return value


THREADS_PER_CORE = 4  # --threads beyond this many per usable core only slows a run down (oversubscription)


def _parse_threads(ctx, param, value: int | None) -> int | None:
    """--threads N, at most THREADS_PER_CORE per usable core: an oversubscribed pool waits for its
    slowest thread (1000 threads on 2 cores turn an 8-s run into minutes)."""
    from genbench.bench.engine.threads import usable_cores

    cores = usable_cores()
    if value is not None and value > THREADS_PER_CORE * cores:
        raise click.BadParameter(
            f"{value} threads on {cores} usable core(s) oversubscribe them and slow the run down; use at "
            f"most {THREADS_PER_CORE * cores} (or leave it out to match the free cores)"
        )
    return value


def out_option(help: str, default: Path | None = Path("results")):
    """--out: the results folder a command writes to (--results, its former name, still accepted)."""
    return click.option(
        "--out", "--results", "out", cls=Renamed, type=click.Path(file_okay=False, path_type=Path),
        default=default, help=help,
    )  # fmt: skip


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache for real-data feature statistics.  [default: OUT/.cache]",
)


def _load_plugins() -> None:
    """Load the entry-point plug-in families (once); each one that fails is one warning line."""
    import warnings

    from genbench.models import plugins

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plugins.PluginWarning)
        plugins.load_plugins()
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)


def _parse_models(ctx, param, value: str | None) -> tuple[str, ...]:
    """Registered names and aliases, entry-point plug-ins, or package.module:ClassName specs
    (imported and registered) -> canonical registry names."""
    from genbench.models.plugins import PluginError, resolve

    if value is None:
        return ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise click.BadParameter(f"no model in {value!r}; choose from {', '.join(model_names())}")
    _load_plugins()
    try:
        canonical = [resolve(n) for n in names]
    except PluginError as exc:
        raise click.BadParameter(f"{exc} (comma-separated; or package.module:ClassName)") from None
    return tuple(dict.fromkeys(canonical))  # "flow,realnvp" is one model


def _parse_seeds(ctx, param, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise click.BadParameter(f"{value!r}: seeds are integers 0..{SEED_LIMIT - 1}, e.g. 0,1,2")
    return tuple(dict.fromkeys(seeds))


def _parse_name(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_run_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_grid(ctx, param, value: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """--grid axes -> each axis as its points' --set values (bench.planning.overrides.split_grid); a bad one
    is bench's one-line UsageError."""
    from genbench.bench.planning.overrides import split_grid

    return tuple(split_grid(v) for v in value)


def _parse_row_names(ctx, param, value: str | None) -> tuple[str, ...]:
    """Report rows: a registered name or alias is its canonical name; any other name is kept as
    written (external samples scored by `bench eval --samples` are rows without a family)."""
    if value is None:
        return ()
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"no name in {value!r}; e.g. vae,gan")
    return tuple(dict.fromkeys(ALIASES.get(n, n) for n in names))


class ComputeBudget(click.ParamType):
    """--compute: FLOPs, or an increasing comma list of them (a compute ladder) -> float or tuple."""

    name = "flops"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # a default, or a value already converted
        parts = [p.strip() for p in value.split(",")]
        try:
            rungs = [float(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r}: give FLOPs as numbers, e.g. 2e14 or 2e13,6e13,2e14", param, ctx)
        if not all(0 < r < float("inf") for r in rungs):
            self.fail(f"{value!r}: every budget must be a positive number of FLOPs", param, ctx)
        if any(a >= b for a, b in zip(rungs, rungs[1:], strict=False)):
            self.fail(f"{value!r}: a compute ladder must increase, e.g. 2e13,6e13,2e14", param, ctx)
        return rungs[0] if len(rungs) == 1 else tuple(rungs)
