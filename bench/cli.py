"""`bench`: the command line. Usage errors exit 2, runtime errors exit 1, both as one line;
`bench --debug ...` (or GENBENCH_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import os
from pathlib import Path

import click

from genbench.core.errors import UserError
from genbench.models.base import ALIASES, MODELS, PROFILE_NAMES, model_names


class _Group(click.Group):
    """Turns a UserError into click's one-line error (exit 1) unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            error = click.ClickException(str(exc))
            error.exit_code = getattr(exc, "exit_code", 1)
            raise error from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, envvar="GENBENCH_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """genbench: train and compare generative image models on MNIST under one protocol."""
    ctx.obj = {"debug": debug}


def _options(*decorators):
    """Several click options as one decorator, so an option shared by commands is declared once."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder holding MNIST/raw/ (else $GENBENCH_DATA, else ./data; downloaded when missing).",
)
device_option = click.option("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps", help="Device.")
cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache for real-data feature statistics.  [default: OUT/.cache]",
)
fidelity_options = _options(
    click.option(
        "--allow-few-samples",
        is_flag=True,
        help="Compute FID even with fewer samples than the feature dimension (rank-deficient covariance).",
    ),
    click.option(
        "--inception-weights",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        envvar="GENBENCH_INCEPTION_WEIGHTS",
        help="torch-fidelity's Inception weights file (gives IS); else the offline port (no IS).",
    ),
)


def _parse_models(ctx, param, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in MODELS and n not in ALIASES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown model {', '.join(unknown) or repr(value)}; choose from "
            f"{', '.join(model_names())} (comma-separated)"
        )
    canonical = [ALIASES.get(n, n) for n in names]
    return tuple(dict.fromkeys(canonical))  # "flow,realnvp" is one model


def _parse_seeds(ctx, param, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds):
        raise click.BadParameter(f"{value!r}: seeds are non-negative integers, e.g. 0,1,2")
    return tuple(dict.fromkeys(seeds))


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None and v is not False}


@cli.command()
@click.option(
    "--models",
    callback=_parse_models,
    metavar="NAMES",
    help=f"Comma-separated model names: {', '.join(model_names())}.",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=None,
    help="Named preset: smoke (seconds, tests), quick (2 CPU cores), full (GPU).  [default: quick]",
)
@click.option("--seeds", callback=_parse_seeds, metavar="0,1,2", help="Comma-separated seeds.  [default: 0]")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    help="Folder for run folders.",
)
@data_dir_option
@device_option
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    help="Training precision; auto = bf16 on CUDA, fp32 elsewhere. Evaluation is always fp32.",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model's networks.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch (on cores shared with other jobs, 1 can be several times faster).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the profile's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override the batch size.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the learning rate."
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option(
    "--n-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Override the number of generated samples for sample-quality metrics.",
)
@click.option("--iwae-k", type=click.IntRange(min=1), default=None, help="Override the IWAE sample count k.")
@click.option("--name", default=None, help="Run-id suffix instead of a timestamp.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder of the same id.")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue a stopped run from its last checkpoint.",
)
@cache_dir_option
@fidelity_options
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config of each run as JSON and exit.")
def run(
    models,
    profile,
    seeds,
    out,
    data_dir,
    device,
    precision,
    compile_,
    threads,
    epochs,
    batch_size,
    lr,
    max_steps,
    n_samples,
    iwae_k,
    name,
    overwrite,
    resume,
    cache_dir,
    allow_few_samples,
    inception_weights,
    progress,
    dry_run,
) -> None:
    """Train and evaluate models; one run folder per (model, seed) under OUT."""
    from genbench.bench import run as runs

    request = runs.RunRequest(
        models=models,
        profile=profile,
        seeds=seeds,
        out=out,
        data_dir=data_dir,
        device=device,
        precision=precision,
        compile=compile_,
        threads=threads,
        train_overrides=_given(epochs=epochs, batch_size=batch_size, lr=lr, max_steps=max_steps),
        eval_overrides=_given(
            n_samples=n_samples,
            iwae_k=iwae_k,
            allow_few_samples=allow_few_samples,
            inception_weights=str(inception_weights.resolve()) if inception_weights else None,
        ),
        name=name,
        overwrite=overwrite,
        resume=resume,
        cache_dir=cache_dir,
        progress=progress,
        dry_run=dry_run,
    )
    runs.run_all(request, echo=click.echo)


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
@click.option("--models", callback=_parse_models, metavar="NAMES", help="Only these models.")
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None, help="Only this profile.")
@click.option("--since", type=click.DateTime(), default=None, help="Only runs created at or after this time.")
@click.option("--run", "run_ids", default="", metavar="RUN_IDS", help="Only these comma-separated run ids.")
@click.option("--include-unfinished", is_flag=True, help="Also show runs that are not done.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="MNIST, for the nearest-neighbour panel (skipped when not found; never downloads).",
)
def report(results_dir, out, formats, models, profile, since, run_ids, include_unfinished, data_dir) -> None:
    """Tables (md/csv/latex/html), figures and results/report/index.html from finished runs."""
    from genbench.bench import report as reports

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in reports.FORMATS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown format {', '.join(unknown)}; choose from {', '.join(reports.FORMATS)}",
            param_hint="--format",
        )
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
    )
    click.echo(result.markdown)
    if result.n_skipped:
        click.echo(
            f"skipped {result.n_skipped} unfinished run(s) (--include-unfinished shows them)", err=True
        )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {len(result.written)} files; open {result.out_dir / 'index.html'}", err=True)


@cli.command()
@click.option(
    "--network",
    "networks",
    type=click.Choice(["mnist", "inception"]),
    multiple=True,
    default=("mnist",),
    help="Feature network (repeatable).",
)
@click.option(
    "--n-samples",
    "counts",
    type=click.IntRange(min=10),
    multiple=True,
    default=(1000, 10_000),
    help="Images per side (repeatable); match the profile's sample count to compare.",
)
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    help="Floors go to RESULTS/floors/.",
)
@data_dir_option
@device_option
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the random training images.")
@cache_dir_option
@fidelity_options
def floors(
    networks, counts, results_dir, data_dir, device, seed, cache_dir, allow_few_samples, inception_weights
) -> None:
    """Real-data floors: FID/KID/PR of train vs test and IS of the test set, per network and count."""
    from genbench.bench.data import load_mnist
    from genbench.bench.device import resolve_device
    from genbench.metrics import fidelity

    device_ = resolve_device(device)
    data = load_mnist(data_dir)
    for network in networks:
        for n in counts:
            doc = fidelity.compute_floors(
                data, network, n, cache_dir or results_dir / ".cache", device_, seed,
                inception_weights=inception_weights, allow_few_samples=allow_few_samples,
            )  # fmt: skip
            path = fidelity.write_floors(results_dir, doc)
            values = ", ".join(
                f"{e['label']} {e['value']:.4g}" for e in doc["metrics"].values() if e["value"] is not None
            )
            click.echo(
                f"{network} n={doc['n_samples']} (train vs {doc['reference']}, seed {seed}, {device_}): "
                f"{values} -> {path}"
            )


@cli.command("train-classifier")
@data_dir_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Weights file.  [default: the committed metrics/weights/mnist_classifier.pt]",
)
@click.option("--seed", type=click.IntRange(min=0), default=0)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: as committed]")
@click.option(
    "--device", default="cpu", metavar="cpu|cuda", help="Bit-identical weights need the same device."
)
def train_classifier(data_dir, out, seed, epochs, device) -> None:
    """Re-create the `mnist` feature network deterministically (weights + .sha256)."""
    from genbench.bench.data import load_mnist
    from genbench.bench.device import resolve_device
    from genbench.metrics import features

    device_ = resolve_device(device)
    accuracy = features.train_classifier(
        load_mnist(data_dir, device=device_),
        out or features.WEIGHTS_PATH,
        seed=seed,
        epochs=epochs or features.EPOCHS,
        device=device_,
    )
    click.echo(
        f"test accuracy {accuracy:.4f} (MNIST test set, 10,000 images) -> {out or features.WEIGHTS_PATH}"
    )


@cli.command("list")
def list_() -> None:
    """Models, their capabilities and profiles; metrics and what they need."""
    from genbench.metrics import METRICS

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
        )
    click.echo("metrics:")
    for metric in METRICS.values():
        needs = ",".join(sorted(metric.needs)) or "-"
        click.echo(f"  {metric.name:<18} needs={needs:<20} -> {', '.join(o.key for o in metric.outputs)}")


def main() -> None:
    cli(prog_name="bench", auto_envvar_prefix=None)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
