"""Any image set as the reference of sample-quality metrics (``bench eval --samples A --reference B``)
and its feature statistics stored as numbers (``bench stats B``), as clean-fid's make_custom_stats.

B is a folder of PNG/JPEG images (bench.engine.image_folder), a .npz/.npy/.pt array of uint8 images
(bench.record.sample_files), or a built-in dataset's split written ``DATASET:SPLIT`` (``mnist:test``). All
of B is the reference. Its features are cached by the SHA-256 of its pixels as a ``.npz``
(metrics.feature_cache, read with ``allow_pickle=False``). Every number is torch-fidelity's
(metrics.fidelity.fidelity_scores). The real-data floor beside each number: one seeded half of B
against all of the other, at the sample count (at most half of B).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics

from genbench.bench.engine.data import DATASETS, get_dataset_spec, load_dataset
from genbench.bench.engine.image_folder import dataset_name, read_folder
from genbench.bench.record.sample_files import ARRAY_SUFFIXES, read_samples
from genbench.core import files
from genbench.core.errors import UsageError, UserError
from genbench.core.schema import SCHEMA_VERSION, entry
from genbench.metrics.feature_cache import FeatureCache, cached_features
from genbench.metrics.fidelity import (
    FeatureNetwork,
    check_sample_count,
    feature_extraction,
    feature_layers,
    fidelity_scores,
    outputs_for,
    resolve_network,
)

SPLITS = ("train", "val", "test")
STATS_FORMAT = "genbench-stats-v1"
DEFAULT_NETWORK = "inception"  # for a folder or an array; a dataset's split takes the dataset's own
HALVES_SEED = 0
FORMS = "a folder of PNG/JPEG images, a .npz/.npy/.pt of uint8 images, or DATASET:SPLIT (e.g. mnist:test)"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference image set: uint8 (N, C, H, W) 0..255, what it is, and the SHA-256 of its pixels."""

    images: Tensor
    name: str  # as given: a resolved path, or DATASET:SPLIT
    dataset: str  # the protocol's "dataset": the split's dataset, folder-<name> or the file's stem
    networks: tuple[str, ...]  # the default feature networks for it
    sha256: str

    def protocol(self) -> dict[str, Any]:
        return {"reference": self.name, "reference_sha256": self.sha256, "n_reference": len(self.images)}

    def cache(self, folder: Path | None) -> FeatureCache | None:
        """Its features' cache file, named by its pixels' checksum (the whole key is inside); None
        without a cache folder (the API's default: nothing written)."""
        return None if folder is None else FeatureCache(Path(folder), f"ref-{self.sha256[:16]}", "all", 0)


def _pixels_sha256(images: Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def read_reference(text: str, data_dir: Path | None = None) -> Reference:
    """B as given to --reference or `bench stats` (see the module docstring)."""
    path = Path(text)
    if path.is_dir():
        images = read_folder(path).images
        name, dataset, networks = str(path.resolve()), dataset_name(path), (DEFAULT_NETWORK,)
    elif path.suffix.lower() in ARRAY_SUFFIXES and path.exists():
        samples = read_samples(path)
        if samples.images.dtype != torch.uint8 and int(samples.images.max()) > 255:
            raise UserError(f"{path}: pixel values reach {int(samples.images.max())}; expected uint8 0..255")
        images, name = samples.images.to(torch.uint8), str(path.resolve())
        dataset, networks = f"array-{path.stem}", (DEFAULT_NETWORK,)
    elif ":" in text and text.split(":", 1)[0] in DATASETS:
        dataset, split = text.split(":", 1)
        if split not in SPLITS:
            raise UsageError(
                f"--reference {text}: the split is one of {', '.join(SPLITS)}, e.g. {dataset}:test"
            )
        spec = get_dataset_spec(dataset)
        images = load_dataset(spec, data_dir).at_8bit().split(split).cpu()
        name, networks = text, spec.feature_networks["quick"] or spec.feature_networks["full"]
    else:
        raise UsageError(f"--reference {text}: not found; pass {FORMS}")
    return Reference(images.contiguous(), name, dataset, tuple(networks), _pixels_sha256(images))


def reference_features(
    reference: Reference, network: FeatureNetwork, cache_dir: Path, device, batch_size: int = 256
) -> Tensor:
    """The reference's FID features (N, d), from its cache file when there, else extracted and cached."""
    layers = feature_layers(network)
    features = cached_features(
        reference.images, network, reference.cache(cache_dir), layers,
        feature_extraction(network, device, batch_size),
    )  # fmt: skip
    return features[network.feature_layer]


# ---------------------------------------------------------------------------------------------------------
# `bench stats`: the statistics as a file of numbers


def stats_path(cache_dir: Path, reference: Reference, network: FeatureNetwork) -> Path:
    return Path(cache_dir) / f"stats-{reference.sha256[:16]}-{network.name}-{network.sha256[:12]}.npz"


def write_stats(path: Path, reference: Reference, network: FeatureNetwork, features: Tensor) -> dict:
    """mu, sigma (torch-fidelity's FID statistics), n, the network's name and SHA-256 and the
    reference's, as plain arrays in a .npz; returns them."""
    stats = fid_features_to_statistics(features)
    record = {
        "format": STATS_FORMAT, "mu": stats["mu"], "sigma": stats["sigma"], "n": len(features),
        "network": network.name, "network_sha256": network.sha256, "reference": reference.name,
        "reference_sha256": reference.sha256,
    }  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in record.items()})
    files.write_bytes(Path(path), buffer.getvalue())
    return record


def read_stats(path: Path) -> dict[str, Any]:
    """A `bench stats` file's numbers; a pickle or a foreign file is a one-line error, never loaded."""
    try:
        with files.open_regular(Path(path)) as f, np.load(f, allow_pickle=False) as stored:
            if str(stored["format"]) != STATS_FORMAT:
                raise KeyError("format")
            return {k: stored[k] if stored[k].ndim else stored[k].item() for k in stored.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(
            f"{path} is not a `bench stats` file ({type(exc).__name__}); make it again with bench stats"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Scoring samples against the reference


def score_against(
    images: Tensor,
    reference: Reference,
    networks: tuple[str, ...],
    config,
    device,
    cache_dir: Path,
    seed: int,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """metrics.json entries of ``images`` (checked to be of the reference's shape) against all of the
    reference, per feature network, and the floors documents (one half of the reference against the
    other) at the same count."""
    entries, floors = {}, {}
    for net in networks:
        network = resolve_network(net, config.inception_weights)
        check_sample_count(min(len(images), len(reference.images)), network, config.allow_few_samples)
        values = fidelity_scores(
            images, reference.images, network, reference_cache=reference.cache(cache_dir), device=device,
            seed=seed, batch_size=config.batch_size, allow_few_samples=config.allow_few_samples,
            protocol_extra=reference.protocol() | {"subset": f"all {len(reference.images)}"},
        )  # fmt: skip
        outputs = {o.key: o for o in outputs_for(net)}
        entries |= {key: entry(outputs[key], value) for key, value in values.items()}
        floors[net] = halves_floor(reference, network, len(images), config, device, seed)
    return entries, floors


def halves_floor(reference: Reference, network: FeatureNetwork, n: int, config, device, seed: int) -> dict:
    """What a perfect generator would score: n images of one seeded half of the reference (n at most
    half of it) against all of the other half, as if they were samples."""
    half = len(reference.images) // 2
    n = min(n, half)
    order = torch.randperm(len(reference.images), generator=torch.Generator().manual_seed(HALVES_SEED))
    first, second = reference.images[order[:n]], reference.images[order[half : 2 * half]]
    compared = f"{n} images of one half of the reference against the other {half} (seed {HALVES_SEED})"
    values = fidelity_scores(
        first, second, network, device=device, seed=seed, batch_size=config.batch_size,
        allow_few_samples=True, floor=False, stderr=False,
        protocol_extra=reference.protocol() | {"compared": compared},
    )  # fmt: skip
    outputs = {o.key: o for o in outputs_for(network.name)}
    return {
        "schema": SCHEMA_VERSION, "dataset": reference.dataset, "feature_network": network.name,
        "sha256": network.sha256, "n_samples": n, "reference": reference.name, "compared": compared,
        "metrics": {key: entry(outputs[key], value) for key, value in values.items()},
    }  # fmt: skip
