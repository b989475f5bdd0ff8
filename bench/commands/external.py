"""``bench eval --samples`` and ``genbench.score_samples``: samples of a generator genbench did not
train (read and checked by ``bench.record.sample_files``), scored by the sample-quality metrics of a
profile's protocol beside the real-data floor for the same count.

``bench eval --samples`` writes ``<results>/ext-<name>-<time>/`` (config.json, status.json,
metrics.json, samples.png) and the floors to ``<results>/floors/`` when missing. Its metrics.json
has "model": the name, "seed": null, "source": {"kind": "external", "path", "sha256", "count",
"format"} and a protocol block with "evaluation": ``EXTERNAL`` and no likelihood fields; every
metric that needs more than samples is n/a. Every check runs before anything is computed, and the
folder appears whole (written under a hidden name, then renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genbench.bench.commands.reference import Reference, read_reference, score_against
from genbench.bench.commands.scoring import EvalRequest, check_networks, eval_config, stamp
from genbench.bench.engine.data import (
    DEFAULT_SPEC,
    DatasetSpec,
    get_dataset_spec,
    load_dataset,
)
from genbench.bench.engine.device import resolve_device
from genbench.bench.engine.evaluate import protocol_block
from genbench.bench.engine.timing import hardware_name
from genbench.bench.record import results
from genbench.bench.record.sample_files import Samples, as_nchw, check_images, read_samples
from genbench.core import files
from genbench.core.errors import UsageError, UserError
from genbench.core.schema import SCHEMA_VERSION, Value, entry
from genbench.metrics import METRICS, EvalContext
from genbench.metrics.base import EVAL_PROFILES, EvalConfig
from genbench.metrics.fidelity import compute_floors, floors_path, network_ids, resolve_network, write_floors

EXTERNAL = "external samples"
LIKELIHOOD_FIELDS = ("precision", "test_images", "test_subset", "iwae_k", "iwae_images")
NOT_MEASURED = "external samples: only sample quality is measured"
DEFAULT_PROFILE = "quick"  # up to 1000 samples, through the dataset's own network
SEED = 0  # torch-fidelity's KID subsets, and the floors' random training images


@dataclasses.dataclass(frozen=True)
class Scored:
    """External samples scored: metrics.json's content and the real-data floors at the same count."""

    doc: dict[str, Any]
    floors: dict[str, dict[str, Any]]  # feature network -> its floors document
    config: EvalConfig
    images: Tensor  # the uint8 (n, C, H, W) images scored
    notes: tuple[str, ...]  # for the user, one line each


def _as_samples(images_or_path: Any, key: str | None) -> Samples:
    if isinstance(images_or_path, (str, os.PathLike)):
        return read_samples(Path(images_or_path), key)
    if isinstance(images_or_path, Tensor):
        array = images_or_path.detach().cpu()
    else:
        array = torch.from_numpy(np.ascontiguousarray(images_or_path))
    images, notes = as_nchw(array, Path("<array>"))
    digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    source = {"kind": "external", "path": None, "sha256": digest, "count": len(images), "format": "array"}
    return Samples(images, source, tuple(notes))


@dataclasses.dataclass(frozen=True)
class ExternalGenerator:
    """Stands in for the model where there is none: all a sample-quality metric may read of it."""

    name: str
    image_shape: tuple[int, int, int]
    levels: int


def external_entries(
    generator: ExternalGenerator, images: Tensor, data, config: EvalConfig, device: torch.device, cache_dir
) -> dict:
    """metrics.json entries for samples without a model: every registered sample-quality metric
    (needs nothing but samples, outputs only in the quality section) on ``images``; n/a the rest."""
    ctx = EvalContext(
        model=generator, data=data, config=config, device=device, seed=SEED, cache_dir=cache_dir,
        _samples={None: images},
    )  # fmt: skip
    entries = {}
    for metric in METRICS.values():
        quality = metric.needs == {"samples"} and all(o.section == "quality" for o in metric.outputs)
        torch.manual_seed(SEED)
        values = (
            metric.compute(ctx) if quality else {o.key: Value(None, na=NOT_MEASURED) for o in metric.outputs}
        )
        for output in metric.outputs:
            entries[output.key] = entry(output, values[output.key])
    return entries


def score(
    images_or_path: Any,
    *,
    name: str = "samples",
    key: str | None = None,
    dataset: DatasetSpec | str = DEFAULT_SPEC,
    profile: str = DEFAULT_PROFILE,
    n_samples: int | None = None,
    networks: tuple[str, ...] = (),
    allow_few_samples: bool = False,
    inception_weights: Path | None = None,
    device: str = "auto",
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    floors_dir: Path | None = None,
    data=None,
    reference: str | None = None,
) -> Scored:
    """Score samples (a path, or an array/tensor of images) under ``profile``'s protocol: the first
    ``n_samples`` (default: all, at most the profile's count), against ``dataset``'s test images or
    all of ``reference`` (bench.commands.reference). With ``floors_dir`` (a results folder) the dataset's
    floors are read from its floors/ when there, else computed and written there."""
    samples = _as_samples(images_or_path, key)
    if profile not in EVAL_PROFILES:
        raise UsageError(f"unknown profile {profile!r}; choose from {', '.join(EVAL_PROFILES)}")
    device_ = resolve_device(device)
    if reference is not None:
        ref = read_reference(reference, data_dir)
        images = check_images(samples, tuple(ref.images.shape[1:]), 256, ref.name)
        n = _count(samples, images, profile, n_samples)
        config = eval_config(
            EVAL_PROFILES[profile], DEFAULT_SPEC, profile, networks or ref.networks, allow_few_samples,
            inception_weights, n_samples=n,
        )  # fmt: skip
        check_networks(config, n)
        return _scored_against(samples, images[:n], ref, config, profile, device_, name, cache_dir)
    spec = get_dataset_spec(dataset)
    images = check_images(samples, spec.image_shape, spec.levels, spec.name)
    n = _count(samples, images, profile, n_samples)
    config = eval_config(
        EVAL_PROFILES[profile], spec, profile, networks, allow_few_samples, inception_weights, n_samples=n
    )
    check_networks(config, n)
    data = data if data is not None else load_dataset(spec, data_dir, device=device_)
    floors, notes = {}, list(samples.notes)
    for net in config.feature_networks:
        n_floor = min(n, len(data.train), len(data.test))  # as compute_floors counts
        path = floors_path(floors_dir, spec.name, net, n_floor) if floors_dir is not None else None
        if path is not None and path.is_file():
            written = files.read_json(path, "delete it; it is re-created")
            if _usable_floor(written, resolve_network(net, config.inception_weights).sha256):
                floors[net] = written
                continue  # else computed by weights that have changed since, or unreadable: again
        floors[net] = compute_floors(  # the feature networks read 8-bit pixels: binarized 0/1 as 0/255
            data.at_8bit(), net, n, cache_dir, device_, SEED, subset_seed=config.subset_seed,
            inception_weights=config.inception_weights, allow_few_samples=config.allow_few_samples,
        )  # fmt: skip
        if floors_dir is not None:
            notes.append(f"wrote the real-data floor {write_floors(floors_dir, floors[net])}")
    generator = ExternalGenerator(name, spec.image_shape, spec.levels)
    entries = external_entries(generator, images[:n], data, config, device_, cache_dir)
    block = protocol_block(data, config, profile, device_, None)
    protocol = {k: v for k, v in block.items() if k not in LIKELIHOOD_FIELDS} | {"evaluation": EXTERNAL}
    doc = {
        "schema": SCHEMA_VERSION,
        "run_id": None,  # the result folder's name, once written
        "model": name,
        "seed": None,
        "protocol": protocol,
        "model_protocol": {"sample_modes": {"default": ""}, "likelihood": None, "likelihood_estimator": None},
        "source": samples.source,
        "metrics": entries,
    }
    return Scored(doc, floors, config, images[:n], tuple(notes))


def _count(samples: Samples, images: Tensor, profile: str, n_samples: int | None) -> int:
    n = n_samples or min(len(images), EVAL_PROFILES[profile].n_samples)
    if n > len(images):
        where = samples.source["path"] or "the array"
        raise UserError(f"{where} holds {len(images)} images; --n-samples {n} needs at least that many")
    return n


def _scored_against(
    samples: Samples,
    images: Tensor,
    ref: Reference,
    config: EvalConfig,
    profile: str,
    device,
    name,
    cache_dir,
) -> Scored:
    """``images`` scored against all of the reference ``ref``, with its halves' floor."""
    computed, floors = score_against(images, ref, config.feature_networks, config, device, cache_dir, SEED)
    entries = {
        o.key: entry(o, Value(None, na=NOT_MEASURED)) for metric in METRICS.values() for o in metric.outputs
    }
    protocol = {
        "profile": profile, "dataset": ref.dataset, "levels": 256, "image_shape": list(images.shape[1:]),
        "device": device.type, "hardware": hardware_name(device), "n_samples": len(images),
        **ref.protocol(), "feature_networks": network_ids(config), "evaluation": EXTERNAL,
    }  # fmt: skip
    doc = {
        "schema": SCHEMA_VERSION, "run_id": None, "model": name, "seed": None, "protocol": protocol,
        "model_protocol": {"sample_modes": {"default": ""}, "likelihood": None, "likelihood_estimator": None},
        "source": samples.source, "metrics": entries | computed,
    }  # fmt: skip
    return Scored(doc, floors, config, images, tuple(samples.notes))


def default_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-.") or "samples"


def _usable_floor(doc: Any, sha256: str) -> bool:
    """A floors document written by these weights, whose every metric value is a number or null."""
    if not isinstance(doc, dict) or doc.get("sha256") != sha256 or not isinstance(doc.get("metrics"), dict):
        return False
    entries = doc["metrics"].values()
    return all(isinstance(e, dict) and isinstance(e.get("value"), (int, float, type(None))) for e in entries)


def score_external(request: EvalRequest, echo: Callable[..., None], data=None) -> tuple[Scored, Path]:
    """``bench eval --samples``: score, then write ``<results>/ext-<name>-<time>/`` whole."""
    out = request.results or Path("results")
    name = request.name or default_name(request.samples)
    out_dir = out / f"ext-{name}-{stamp()}"
    if out_dir.exists():
        raise UserError(f"{out_dir} exists; pick another --name")
    settings = request.settings
    scored = score(
        request.samples, name=name, key=request.key, dataset=request.dataset or DEFAULT_SPEC,
        profile=request.profile or DEFAULT_PROFILE, n_samples=request.n_samples, networks=request.networks,
        allow_few_samples=settings.allow_few_samples, inception_weights=settings.inception_weights,
        device=settings.device, data_dir=settings.data_dir,
        cache_dir=request.cache_dir or out / ".cache",
        floors_dir=out, data=data, reference=request.reference,
    )  # fmt: skip
    for note in scored.notes:
        echo(f"note: {note}", err=True)
    doc = dict(scored.doc, run_id=out_dir.name)
    protocol = doc["protocol"]
    config = {
        "run_id": out_dir.name,
        "model": name,
        "source": doc["source"],
        "dataset": protocol["dataset"],
        "profile": protocol["profile"],
        "eval_config": scored.config,
        "device": protocol["device"],
        "created": results.now_iso(),
        "git_commit": results.git_commit(),
        "versions": results.versions(),
        "command": sys.argv,
    }
    # Written under a hidden name, then renamed: no reader ever sees a folder without its metrics.
    staging = out / f".{out_dir.name}.{secrets.token_hex(4)}.tmp"
    try:
        staging.mkdir(parents=True)
        files.write_json(staging / "config.json", config)
        files.write_json(staging / "metrics.json", doc)
        files.save_image_grid(staging / "samples.png", scored.images[:64], levels=protocol["levels"])
        results.set_status(staging, "done")
        os.rename(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(
            f"cannot write {out_dir} ({exc.strerror or exc}); pass --out to a writable folder"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(scored, doc=doc), out_dir


def quality_line(doc: dict[str, Any], floors: dict[str, dict[str, Any]]) -> str:
    """One line: each sample-quality number with the real-data floor of the same count beside it."""
    parts = []
    for key, e in doc["metrics"].items():
        if e["section"] != "quality" or e["value"] is None:
            continue
        floor_doc = floors.get(e["protocol"].get("feature_network"), {})
        floor = floor_doc.get("metrics", {}).get(e.get("floor") or key, {}).get("value")
        parts.append(
            f"{e['label']} {e['value']:.4g}" + (f" (floor {floor:.4g})" if floor is not None else "")
        )
    p = doc["protocol"]
    return (
        f"{doc['run_id'] or doc['model']}: "
        + " | ".join(parts)
        + f" [n_samples={p['n_samples']}, {p['device']}]"
    )


FLAT_PROTOCOL = (
    "profile",
    "dataset",
    "evaluation",
    "n_samples",
    "reference",
    "reference_sha256",
    "n_reference",
    "device",
)


def flat_scores(doc: dict[str, Any], floors: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One flat object (``bench eval --json``): each computed metric's value and, where it has one,
    its standard error (``<key>_stderr``); the protocol (sample count, reference, each feature
    network's SHA-256 as ``<network>_sha256``); with ``floors``, each value's real-data floor at the
    same count (``<key>_floor``)."""
    protocol = doc["protocol"]
    flat = {"run_id": doc.get("run_id"), "model": doc.get("model")}
    flat |= {k: protocol[k] for k in FLAT_PROTOCOL if k in protocol}
    for key, e in doc["metrics"].items():
        if e["value"] is None:
            continue
        flat[key] = e["value"]
        if e.get("stderr") is not None:
            flat[f"{key}_stderr"] = e["stderr"]
        network = e["protocol"].get("feature_network")
        if network is not None:
            flat[f"{network}_sha256"] = e["protocol"]["sha256"]
            floor = (floors or {}).get(network, {}).get("metrics", {}).get(e.get("floor") or key, {})
            if floor.get("value") is not None:
                flat[f"{key}_floor"] = floor["value"]
    return flat


def score_samples(
    images_or_path: Any,
    *,
    dataset: DatasetSpec | str = DEFAULT_SPEC,
    reference: str | None = None,
    profile: str = DEFAULT_PROFILE,
    n_samples: int | None = None,
    networks: tuple[str, ...] = (),
    key: str | None = None,
    allow_few_samples: bool = False,
    inception_weights: Path | None = None,
    device: str = "auto",
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """``genbench.score_samples``: the sample-quality metrics of images from any generator under a
    profile's protocol, as ``bench eval --samples`` computes them, writing nothing. ``images_or_path``:
    a .npz/.npy/.pt file or a folder of .png files, or a uint8 array/tensor (N, C, H, W), (N, H, W)
    or (N, H, W, C). ``reference``: compare with all of another image set (a folder, an array file,
    or DATASET:SPLIT) instead of ``dataset``'s test images. Returns ``flat_scores`` with the floors:
    the computed metrics ("fid_mnist": value, "fid_mnist_stderr", "fid_mnist_floor"...) and the
    protocol ("n_samples", "reference", "mnist_sha256"...); the nested document is ``score``'s."""
    scored = score(
        images_or_path, key=key, dataset=dataset, profile=profile, n_samples=n_samples, networks=networks,
        allow_few_samples=allow_few_samples, inception_weights=inception_weights, device=device,
        data_dir=data_dir, cache_dir=cache_dir, reference=reference,
    )  # fmt: skip
    return flat_scores(scored.doc, scored.floors)
