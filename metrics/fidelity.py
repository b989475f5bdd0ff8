"""Sample quality through torch-fidelity: FID, KID, precision/recall and IS, per feature network.

Every number is torch-fidelity's: its feature extraction and its metric functions, with the
settings torch_fidelity.calculate_metrics would use (tests/test_reliability_cache.py checks they
agree); this module only chooses the inputs, the feature network and the protocol, and states them
beside each value. Generated samples are
compared with N test images (N = the number of samples, at most the whole test set): the first N of
a fixed, seeded permutation of the test set, the same subset for every model. The real split's
features are cached under the evaluation's cache folder as plain arrays (metrics/feature_cache.py),
keyed by dataset, subset, count, pixels and feature-network weights, so they are computed once.

Two registered metrics, one per feature network: "fidelity_mnist" (this project's classifier,
metrics/features.py) and "fidelity_inception" (metrics/inception.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from genbench.core import files
from genbench.core.errors import UserError
from genbench.core.schema import SCHEMA_VERSION, Output, Value, entry
from genbench.metrics import features, inception, noise
from genbench.metrics.base import EvalContext, describe_subset, register_metric, subset_indices
from genbench.metrics.feature_cache import FeatureCache, cached_features

NETWORKS = (*features.CLASSIFIERS, "inception")  # ("mnist", "fashion-mnist", "inception")
REFERENCE_SPLIT = "test"
# torch-fidelity's default subset size, lowered to half the sample count when fewer: with subsets
# as large as the set itself every subset is the whole set and KID's std is meaningless.
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
MIN_SAMPLES = max(ISC_SPLITS, PRC_NEIGHBORHOOD + 1)  # below this IS splits are empty and PR has no neighbours

# FID needs at least as many samples as feature dimensions (see check_sample_count).
ALLOW_HINT = "pass --allow-few-samples to compute it anyway"


def kid_subset_size(n: int) -> int:
    return min(KID_SUBSET_SIZE, max(2, n // 2))


def outputs_for(net: str) -> tuple[Output, ...]:
    rank = 100 * (NETWORKS.index(net) + 1) if net in NETWORKS else 900
    return (
        Output(f"fid_{net}", f"FID ({net})", "-", False, "quality", rank + 1),
        Output(f"kid_{net}", f"KID ({net})", "-", False, "quality", rank + 2),
        Output(f"is_{net}", f"IS ({net})", "-", True, "quality", rank + 3),
        Output(f"precision_{net}", f"Precision ({net})", "-", True, "quality", rank + 4),
        Output(f"recall_{net}", f"Recall ({net})", "-", True, "quality", rank + 5),
    )


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """A feature network as torch-fidelity will run it."""

    name: str  # one of NETWORKS: the suffix of the metric keys
    extractor: str  # torch-fidelity feature extractor name
    weights_path: Path
    sha256: str
    feature_layer: str  # for FID, KID and PR
    feature_dim: int
    is_layer: str | None  # for IS; None when the network has no logits
    no_is_reason: str | None = None


def resolve_network(name: str, inception_weights: str | os.PathLike | None = None) -> FeatureNetwork:
    """The feature network `name`, its weights located and checksummed. Never downloads."""
    if name in features.CLASSIFIERS:
        spec = features.CLASSIFIERS[name]
        return FeatureNetwork(
            name, spec.extractor, spec.weights_path, features.verified_sha256(spec.weights_path),
            features.FEATURE_LAYER, features.FEATURE_DIM, features.LOGITS_LAYER,
        )  # fmt: skip
    if name == "inception":
        source = inception.resolve_inception(inception_weights)
        return FeatureNetwork(
            name, source.extractor, source.weights_path, source.sha256,
            inception.FEATURE_LAYER, inception.FEATURE_DIM, source.is_layer,
            None if source.is_layer else inception.NO_LOGITS_REASON,
        )  # fmt: skip
    raise UserError(f"unknown feature network {name!r}; choose from {', '.join(NETWORKS)}")


class RGB8(Dataset):
    """uint8 (N, C, H, W) images, C = 1 or 3, pixels 0..levels-1, as torch-fidelity wants them:
    uint8 RGB (3, H, W) per item in 0..255 (grey repeated over the three channels)."""

    def __init__(self, images: Tensor, levels: int = 256) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected uint8 (N, 1 or 3, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        self.images, self.levels = images.cpu(), levels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return files.to_8bit(self.images[i], self.levels).expand(3, -1, -1)  # (3, H, W) 0..255


def check_sample_count(n: int, network: FeatureNetwork, allow: bool = False) -> None:
    """Refuse FID from fewer samples than feature dimensions: the sample covariance then has rank
    at most n - 1 < d, its matrix square root is ill-defined and FID is dominated by that bias."""
    if n < MIN_SAMPLES:
        raise UserError(f"sample-quality metrics need at least {MIN_SAMPLES} samples, got {n}")
    if n < network.feature_dim and not allow:
        raise UserError(
            f"FID ({network.name}) from {n} samples is unreliable: the {network.feature_dim}-dim "
            f"feature covariance has rank at most {n - 1}; use at least {network.feature_dim} samples, "
            f"or {ALLOW_HINT}"
        )


def reference_images(test: Tensor, n: int, subset_seed: int) -> Tensor:
    """The FID reference: the first n of the fixed random permutation of the test set (CPU)."""
    index = subset_indices(len(test), n, subset_seed)
    return (test if index is None else test[index.to(test.device)]).cpu()


def device_kwargs(device: str | torch.device) -> tuple[bool, contextlib.AbstractContextManager]:
    """torch-fidelity knows only cuda=True/False (the current CUDA device); other devices run on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return True, torch.cuda.device(device)
    return False, contextlib.nullcontext()


def feature_layers(network: FeatureNetwork) -> tuple[str, ...]:
    """The layers every extraction takes (one forward pass gives them all): FID/KID/PR's features,
    and IS's logits where the network has them."""
    return (network.feature_layer,) if network.is_layer is None else (network.feature_layer, network.is_layer)


def feature_extraction(
    network: FeatureNetwork, device: str | torch.device, batch_size: int = 256
) -> Callable[[Tensor], dict[str, Tensor]]:
    """images uint8 (N, C, H, W) -> {layer: (N, d)} through torch-fidelity's extraction, every layer
    of ``feature_layers`` in one pass; the extractor is built at the first call and kept."""
    cuda, device_scope = device_kwargs(device)
    extractor = None

    def extract(images: Tensor) -> dict[str, Tensor]:
        nonlocal extractor
        with device_scope:
            if extractor is None:
                # Always a local weights path: torch-fidelity downloads when given none.
                extractor = create_feature_extractor(
                    network.extractor, list(feature_layers(network)), cuda=cuda,
                    feature_extractor_weights_path=str(network.weights_path), verbose=False,
                )  # fmt: skip
            # save_cpu_ram: no DataLoader worker processes for in-memory tensors
            return get_featuresdict_from_dataset(
                RGB8(images), extractor, batch_size, cuda, save_cpu_ram=True, verbose=False
            )

    return extract


def run_torch_fidelity(
    input1: Tensor,
    input2: Tensor | None,
    network: FeatureNetwork,
    *,
    fid: bool,
    kid: bool,
    prc: bool,
    isc: bool,
    input1_cache: FeatureCache | None = None,
    input2_cache: FeatureCache | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 256,
    stderr: bool = False,
) -> dict[str, float]:
    """The numbers torch_fidelity.calculate_metrics gives for uint8 (N, C, H, W) images (input1 plays
    "generated", input2 "real"), computed by its own functions: its feature extraction, then its
    metric steps on the features. An input with a FeatureCache has its features read from, or
    written to, that cache as plain arrays; torch-fidelity itself is never handed a file.
    ``stderr`` adds "fid_stderr" and "kid_stderr" (metrics.noise.bootstrap_stderr)."""
    layers = feature_layers(network)
    extract = feature_extraction(network, device, batch_size)

    def features_of(images: Tensor, cache: FeatureCache | None) -> dict[str, Tensor]:
        return extract(images) if cache is None else cached_features(images, network, cache, layers, extract)

    features1 = features_of(input1, input1_cache)  # {layer: (N1, d)}
    features2 = None if input2 is None else features_of(input2, input2_cache)  # {layer: (N2, d)}
    scores: dict[str, float] = {}
    if isc:  # torch-fidelity shuffles before splitting by default (samples_shuffle)
        scores |= isc_features_to_metric(features1[network.is_layer], ISC_SPLITS, True, seed)
    if features2 is None:
        return scores
    f1, f2 = features1[network.feature_layer], features2[network.feature_layer]
    if fid:
        stats1, stats2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
        scores |= fid_statistics_to_metric(stats1, stats2, verbose=False)
    if kid:
        scores |= kid_features_to_metric(
            f1, f2, kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset_size(min(len(f1), len(f2))),
            rng_seed=seed, verbose=False,
        )  # fmt: skip
    if stderr:
        errors = noise.bootstrap_stderr(f1, f2, kid_subset_size(min(len(f1), len(f2))), seed)
        scores |= {"fid_stderr": errors["fid"], "kid_stderr": errors["kid"]}
    if prc:  # save_cpu_ram: PR distances in blocks
        scores |= prc_features_to_metric(
            f1, f2, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True, verbose=False
        )
    return scores


def base_protocol(network: FeatureNetwork, n: int, n_reference: int, seed: int, device) -> dict[str, Any]:
    cuda, _ = device_kwargs(device)
    return {
        "n_samples": n,
        "n_reference": n_reference,
        "feature_network": network.name,
        "feature_extractor": network.extractor,
        "feature_layer": network.feature_layer,
        "feature_dim": network.feature_dim,
        "reference": REFERENCE_SPLIT,
        "seed": seed,
        "device": "cuda" if cuda else "cpu",
        "sha256": network.sha256,
    }


def fidelity_scores(
    generated: Tensor,
    reference: Tensor,
    network: FeatureNetwork,
    *,
    reference_cache: FeatureCache | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 256,
    allow_few_samples: bool = False,
    protocol_extra: dict[str, Any] | None = None,
    floor: bool = True,
    stderr: bool = True,
) -> dict[str, Value]:
    """FID, KID, precision, recall and IS of `generated` against `reference` (uint8 (N, 1, H, W)
    each), keyed fid_<net>, kid_<net>, precision_<net>, recall_<net>, is_<net>. ``floor``: each value
    names the real-data floor entry of the same key to be shown beside it. ``reference_cache``: where
    the reference's features are cached. ``stderr``: FID and KID carry their bootstrap standard
    error over the generated samples (metrics.noise)."""
    n, n_ref = len(generated), len(reference)
    check_sample_count(min(n, n_ref), network, allow_few_samples)
    has_is = network.is_layer is not None
    scores = run_torch_fidelity(
        generated, reference, network, fid=True, kid=True, prc=True, isc=has_is,
        input2_cache=reference_cache, device=device, seed=seed, batch_size=batch_size, stderr=stderr,
    )  # fmt: skip
    protocol = base_protocol(network, n, n_ref, seed, device) | (protocol_extra or {})
    if stderr:
        protocol = protocol | noise.bootstrap_protocol(kid_subset_size(min(n, n_ref)))
    fid_protocol = dict(protocol, rank_deficient=True) if min(n, n_ref) < network.feature_dim else protocol
    kid_protocol = dict(
        protocol,
        kid_subset_size=kid_subset_size(min(n, n_ref)),
        kid_subsets=KID_SUBSETS,
        std=scores["kernel_inception_distance_std"],
    )
    prc_protocol = dict(protocol, prc_neighborhood=PRC_NEIGHBORHOOD)
    net = network.name

    def value(
        key: str,
        number: float | None,
        protocol: dict[str, Any],
        na: str | None = None,
        se: float | None = None,
    ) -> Value:
        return Value(number, protocol, na=na, floor=key if floor else None, stderr=se)

    values = {
        f"fid_{net}": value(
            f"fid_{net}", scores["frechet_inception_distance"], fid_protocol, se=scores.get("fid_stderr")
        ),
        f"kid_{net}": value(
            f"kid_{net}", scores["kernel_inception_distance_mean"], kid_protocol, se=scores.get("kid_stderr")
        ),
        f"precision_{net}": value(f"precision_{net}", scores["precision"], prc_protocol),
        f"recall_{net}": value(f"recall_{net}", scores["recall"], prc_protocol),
    }
    # IS looks at the generated samples alone: no reference.
    is_protocol = {k: v for k, v in protocol.items() if k not in ("n_reference", "reference", "feature_dim")}
    is_protocol |= {"feature_layer": network.is_layer, "isc_splits": ISC_SPLITS}
    if has_is:
        values[f"is_{net}"] = value(
            f"is_{net}", scores["inception_score_mean"], dict(is_protocol, std=scores["inception_score_std"])
        )
    else:
        values[f"is_{net}"] = value(f"is_{net}", None, is_protocol, na=network.no_is_reason)
    return values


def not_in_profile(net: str) -> dict[str, Value]:
    reason = (
        f"feature network '{net}' not in this profile's protocol "
        f"(enable with EvalConfig.feature_networks, as in the 'full' profile)"
    )
    return {o.key: Value(None, {"feature_network": net}, na=reason) for o in outputs_for(net)}


def compute_for_network(ctx: EvalContext, net: str) -> dict[str, Value]:
    """The registered metrics' body: the model's samples against the random test subset."""
    config = ctx.config
    if config.feature_networks is None:
        raise ValueError("EvalConfig.feature_networks is unresolved; bench.planning.plan sets the dataset's")
    if net not in config.feature_networks:
        return not_in_profile(net)
    network = resolve_network(net, config.inception_weights)
    n_reference = min(config.n_samples, len(ctx.data.test))
    check_sample_count(
        min(config.n_samples, n_reference), network, config.allow_few_samples
    )  # before sampling
    # The feature networks read 8-bit images: binarized pixels 0/1 become 0/255.
    reference = reference_images(ctx.data.test, n_reference, config.subset_seed)  # (N, C, H, W) uint8
    reference = files.to_8bit(reference, ctx.data.levels)
    cache = (
        None if ctx.cache_dir is None
        else FeatureCache(Path(ctx.cache_dir), ctx.data.name, REFERENCE_SPLIT, config.subset_seed)
    )  # fmt: skip
    return fidelity_scores(
        files.to_8bit(ctx.samples(), ctx.model.levels), reference, network, reference_cache=cache,
        device=ctx.device, seed=ctx.seed, batch_size=config.batch_size,
        allow_few_samples=config.allow_few_samples,
        protocol_extra={"subset": describe_subset(len(ctx.data.test), n_reference, config.subset_seed)},
    )  # fmt: skip


def network_ids(config) -> dict[str, str]:
    """Feature network name -> the first 12 hex digits of its weights' SHA-256, for the protocol."""
    return {
        net: resolve_network(net, config.inception_weights).sha256[:12] for net in config.feature_networks
    }


for _net in NETWORKS:  # one metric per feature network: fidelity_mnist, fidelity_inception, ...
    register_metric(f"fidelity_{_net}", needs=("samples",), outputs=outputs_for(_net))(
        functools.partial(compute_for_network, net=_net)
    )


# ---------------------------------------------------------------------------------------------------------
# Real-data floors: what a perfect model would score at this sample count


def compute_floors(
    data,
    network: str,
    n_samples: int,
    cache_dir: str | os.PathLike | None,
    device: str | torch.device,
    seed: int,
    *,
    subset_seed: int = 0,
    batch_size: int = 256,
    inception_weights: str | os.PathLike | None = None,
    allow_few_samples: bool = False,
) -> dict[str, Any]:
    """What a perfect model would score at this sample count: FID, KID, precision and recall of
    n_samples random training images (as if generated) against the same test subset a run's samples
    meet (``subset_seed``), as the mean and sd over up to FLOOR_DRAWS disjoint draws of training
    images (a seeded permutation cut into consecutive blocks), and IS of those test images."""
    feature_network = resolve_network(network, inception_weights)
    n = min(n_samples, len(data.train), len(data.test))
    test = reference_images(data.test, n, subset_seed)  # (N, C, H, W) uint8
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    n_draws = max(1, min(noise.FLOOR_DRAWS, len(data.train) // n))
    test_cache = (
        None if cache_dir is None else FeatureCache(Path(cache_dir), data.name, REFERENCE_SPLIT, subset_seed)
    )
    common = dict(device=device, seed=seed, batch_size=batch_size)
    subset = describe_subset(len(data.test), n, subset_seed)
    draws = [
        fidelity_scores(
            data.train[order[j * n : (j + 1) * n].to(data.train.device)].cpu(),
            test,
            feature_network,
            reference_cache=test_cache,
            allow_few_samples=allow_few_samples,
            floor=False,
            stderr=False,
            protocol_extra={"compared": "train", "subset": subset, "train_draw": f"block {j}"},
            **common,
        )  # fmt: skip
        for j in range(n_draws)
    ]
    values = noise.pool_draws(draws)
    is_key = f"is_{network}"
    is_protocol = {k: v for k, v in values[is_key].protocol.items() if k != "compared"}
    is_protocol["images"] = REFERENCE_SPLIT  # IS of the test images themselves
    if feature_network.is_layer is None:
        values[is_key] = dataclasses.replace(values[is_key], protocol=is_protocol)
    else:
        # The test images' logits are in the cache from the call above.
        scores = run_torch_fidelity(
            test, None, feature_network, fid=False, kid=False, prc=False, isc=True,
            input1_cache=test_cache, **common,
        )  # fmt: skip
        is_protocol["std"] = scores["inception_score_std"]
        values[is_key] = Value(scores["inception_score_mean"], is_protocol)
    outputs = {o.key: o for o in outputs_for(network)}
    return {
        "schema": SCHEMA_VERSION,
        "dataset": data.name,
        "feature_network": network,
        "sha256": feature_network.sha256,
        "n_samples": n,
        "reference": f"{REFERENCE_SPLIT}, {subset}",
        "compared": "train",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {key: entry(outputs[key], value) for key, value in values.items()},
    }


def floors_path(results_dir: str | os.PathLike, dataset: str, network: str, n_samples: int) -> Path:
    return Path(results_dir) / "floors" / f"{dataset}_{network}_n{n_samples}.json"


def write_floors(results_dir: str | os.PathLike, floors: dict[str, Any]) -> Path:
    """Write a compute_floors document to <results_dir>/floors/<dataset>_<net>_n<count>.json atomically."""
    path = floors_path(results_dir, floors["dataset"], floors["feature_network"], floors["n_samples"])
    files.write_json(path, floors)
    return path
