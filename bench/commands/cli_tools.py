"""`bench floors`, `bench train-classifier`, `bench eval` and `bench sample`: the commands around a
run (reference rows, feature networks, scoring checkpoints and other people's samples)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from genbench.bench.engine.data import DEFAULT_DATASET
from genbench.bench.planning.cli_options import (
    CLASSIFIER_NAMES,
    _load_plugins,
    _parse_device,
    _parse_name,
    cache_dir_option,
    dataset_option,
    networks_option,
    out_option,
)
from genbench.bench.planning.settings import setting_options
from genbench.bench.record.results import SEED_LIMIT, check_writable_folder
from genbench.bench.record.sample_files import SAMPLE_LIMIT
from genbench.core import files
from genbench.models.base import PROFILE_NAMES


@click.command()
@dataset_option("Dataset whose train and test images are compared.")
@networks_option("Feature network (repeatable).  [default: the dataset's classifier; inception for cifar10]")
@click.option(
    "--n-samples",
    "counts",
    type=click.IntRange(min=10),
    multiple=True,
    default=(1000, 10_000),
    help="Images per side (repeatable); match the profile's sample count to compare.",
)
@out_option("Results folder: floors go to OUT/floors/.")
@setting_options("data_dir", "device")
@click.option(
    "--seed", type=click.IntRange(0, SEED_LIMIT - 1), default=0, help="Seed of the random training images."
)
@cache_dir_option
@setting_options("allow_few_samples", "inception_weights")
def floors(
    dataset, networks, counts, out, data_dir, device, seed, cache_dir, allow_few_samples,
    inception_weights,
) -> None:  # fmt: skip
    """Real-data floors: FID/KID/PR of train vs test and IS of the test set, per network and count."""
    from genbench.bench.engine.data import default_feature_networks, load_dataset
    from genbench.bench.engine.device import resolve_device
    from genbench.metrics import fidelity

    device_ = resolve_device(device)
    check_writable_folder(out / "floors", "--out")
    check_writable_folder(cache_dir or out / ".cache", "--cache-dir")
    data = load_dataset(dataset, data_dir).at_8bit()  # the feature networks read 8-bit pixels
    # Default: the dataset's classifier (its quick profile's network), else its full profile's (Inception).
    defaults = default_feature_networks(dataset, "quick") or default_feature_networks(dataset, "full")
    for network in networks or defaults:
        for n in counts:
            doc = fidelity.compute_floors(
                data, network, n, cache_dir or out / ".cache", device_, seed,
                inception_weights=inception_weights, allow_few_samples=allow_few_samples,
            )  # fmt: skip
            path = fidelity.write_floors(out, doc)
            values = ", ".join(
                f"{e['label']} {e['value']:.4g}" for e in doc["metrics"].values() if e["value"] is not None
            )
            click.echo(
                f"{network} n={doc['n_samples']} (train vs {doc['reference']}, seed {seed}, {device_}): "
                f"{values} -> {path}"
            )


@click.command("train-classifier")
@dataset_option(
    "The dataset whose feature network to train (binarized-mnist uses mnist's).", names=CLASSIFIER_NAMES
)
@setting_options("data_dir")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Weights file (and its .sha256).  [default: ./DATASET_classifier.pt; the committed "
    "metrics/weights/ file is replaced only when --out names it]",
)
@click.option("--seed", type=click.IntRange(0, SEED_LIMIT - 1), default=0)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: as committed]")
@click.option(
    "--device",
    default="cpu",
    callback=_parse_device,
    metavar="cpu|cuda",
    help="Bit-identical weights need the same device.",
)
def train_classifier(dataset, data_dir, out, seed, epochs, device) -> None:
    """Re-create a dataset's feature network deterministically (weights + .sha256)."""
    from genbench.bench.engine.data import load_dataset
    from genbench.bench.engine.device import resolve_device
    from genbench.metrics import features

    spec = features.get_classifier_spec(dataset)
    # The shipped weights (their checksum is in the repository) are replaced only on request.
    if out is None and Path(spec.weights_path.name).resolve() == spec.weights_path:
        raise click.UsageError(
            f"here the default --out is the shipped {spec.weights_path}; pass --out naming it to replace "
            "it, or run elsewhere"
        )
    out = out or Path(spec.weights_path.name)
    check_writable_folder(out.parent, "--out")  # before minutes of training
    files.check_output_file(out, "--out")
    device_ = resolve_device(device)
    data = load_dataset(dataset, data_dir, device=device_)
    accuracy = features.train_classifier(data, out, seed=seed, epochs=epochs or spec.epochs, device=device_)
    click.echo(f"test accuracy {accuracy:.4f} ({dataset} test set, {len(data.test):,} images) -> {out}")


@click.command("eval")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--samples",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    metavar="PATH",
    help="Score another generator's samples instead: uint8 images in a .npz/.npy/.pt, or a folder of .png.",
)
@click.option("--key", default=None, help="--samples: the array's name in a .npz (or .pt dict) of several.")
@click.option(
    "--reference",
    default=None,
    metavar="FOLDER|FILE|DATASET:SPLIT",
    help="--samples: compare with all of these images instead of the dataset's test set: a folder of "
    "PNG/JPEG, a .npz/.npy/.pt of uint8 images, or a dataset's split (mnist:test).  [default network: "
    "inception; a dataset's split: the dataset's]",
)
@dataset_option(
    f"--samples: the dataset they imitate (its test set is the reference).  [default: {DEFAULT_DATASET}]",
    default=None,
)
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=None,
    help="Take this profile's evaluation protocol.  [default: the run's; quick for --samples]",
)
@click.option(
    "--n-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Samples for sample-quality metrics.  [default: the profile's; for --samples all, at most that]",
)
@networks_option("Feature network (repeatable).  [default: the profile's for the dataset]")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Test images (likelihood metrics).")
@click.option("--iwae-k", type=click.IntRange(min=1), default=None, help="IWAE sample count k.")
@click.option("--ais-steps", type=click.IntRange(min=1), default=None, help="AIS intermediate distributions.")
@click.option("--ais-chains", type=click.IntRange(min=1), default=None, help="AIS chains per image.")
@click.option(
    "--sampler-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Sampler step count, for a family that has one (diffusion).",
)
@setting_options("allow_few_samples", "inception_weights", "device", "data_dir")
@cache_dir_option
@click.option(
    "--name",
    default=None,
    callback=_parse_name,
    help="Result-folder suffix; with --samples also the row's name.",
)
@out_option("--samples: results folder for the result and the floors.  [default: results]", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one flat JSON object of the scores on stdout.")
def eval_(
    run_dir, samples, key, reference, dataset, profile, n_samples, networks, n_test, iwae_k, ais_steps,
    ais_chains, sampler_steps, cache_dir, name, out, as_json, **settings,
) -> None:  # fmt: skip
    """Evaluate RUN_DIR's checkpoint under another protocol (the result goes to a new folder beside
    the run, RUN_DIR+eval-NAME; the run is never touched), or score --samples of a generator genbench
    did not train (RESULTS/ext-NAME-TIME, with the real-data floor at the same count)."""
    from genbench.bench.commands import external, scoring
    from genbench.bench.execute.run import summary_line
    from genbench.bench.planning.settings import RunSettings

    request = scoring.EvalRequest(
        run_dir=run_dir, samples=samples, key=key, reference=reference, dataset=dataset, profile=profile,
        n_samples=n_samples,
        networks=networks, n_test=n_test, iwae_k=iwae_k, ais_steps=ais_steps, ais_chains=ais_chains,
        sampler_steps=sampler_steps,
        settings=RunSettings.from_options(**settings), cache_dir=cache_dir, name=name, results=out,
    )  # fmt: skip
    scoring.check_request(request)
    if run_dir is not None:
        _load_plugins()
        report, out_dir = scoring.reevaluate(request, echo=click.echo)
        floors, line = None, summary_line(report)
    else:
        scored, out_dir = external.score_external(request, echo=click.echo)
        report, floors, line = scored.doc, scored.floors, external.quality_line(scored.doc, scored.floors)
    click.echo(json.dumps(external.flat_scores(report, floors)) if as_json else line)
    click.echo(f"-> {out_dir}", err=True)


@click.command()
@click.argument("reference", metavar="FOLDER|FILE|DATASET:SPLIT")
@networks_option("Feature network (repeatable).  [default: inception; a dataset's split: the dataset's]")
@click.option(
    "--out",
    "stats_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The statistics file (.npz).  [default: CACHE_DIR/stats-<pixels sha256>-<network>-<sha256>.npz]",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results/.cache"),
    show_default=True,
    help="Cache of the reference's features (bench eval --reference reads them from there).",
)
@setting_options("device", "data_dir", "inception_weights")
def stats(reference, networks, stats_out, cache_dir, device, data_dir, inception_weights) -> None:
    """Precompute a reference set's feature statistics (mu, sigma, n, the network and its SHA-256) as
    a .npz of numbers, and cache its features, which `bench eval --samples A --reference B` reads."""
    from genbench.bench.commands import reference as references
    from genbench.bench.engine.device import resolve_device
    from genbench.metrics.fidelity import resolve_network

    if stats_out is not None:
        if len(networks) > 1:
            raise click.UsageError("--out holds one network's statistics; name one --network")
        if stats_out.suffix != ".npz":
            raise click.UsageError(f"--out {stats_out}: the statistics are written as a .npz")
        files.check_output_file(stats_out, "--out")
    check_writable_folder(cache_dir, "--cache-dir")
    ref = references.read_reference(reference, data_dir)
    for net in networks or ref.networks:
        network = resolve_network(net, inception_weights)
        features = references.reference_features(ref, network, cache_dir, resolve_device(device))
        path = stats_out or references.stats_path(cache_dir, ref, network)
        record = references.write_stats(path, ref, network, features)
        click.echo(
            f"{ref.name}: {record['n']} images, {net} features ({network.sha256[:12]}), mu "
            f"{tuple(record['mu'].shape)} sigma {tuple(record['sigma'].shape)} -> {path}"
        )


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "-n", "n", type=click.IntRange(1, SAMPLE_LIMIT), required=True, metavar="N",
    help=f"Number of samples (at most {SAMPLE_LIMIT:,}; draw more in several calls with other --seed).",
)  # fmt: skip
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .npz (uint8 (N, C, H, W) under the key 'images'; bench eval --samples reads it) or a .png grid.",
)
@click.option("--mode", default=None, help="Sample mode of the model (bench list).  [default: its first]")
@click.option(
    "--seed", type=click.IntRange(0, SEED_LIMIT - 1), default=None, help="[default: the run's seed]"
)
@setting_options("device")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def sample(run_dir, n, out, mode, seed, device, progress) -> None:
    """Draw N samples of a trained run with the weights it was evaluated with (EMA where it kept them)."""
    from genbench.bench.commands.sampling import sample_run

    _load_plugins()
    click.echo(sample_run(run_dir, n, out, mode=mode, seed=seed, device=device, progress=progress))
