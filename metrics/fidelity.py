"""Sample quality through torch-fidelity: FID, KID, precision/recall and IS, per feature network.

Every number comes from torch_fidelity.calculate_metrics; this module only chooses the inputs,
the feature network and the protocol, and states them beside each value. Generated samples are
compared with N test images (N = the number of samples, at most the whole test set): the first N of
a fixed, seeded permutation of the test set, the same subset for every model. The real split's
features and FID statistics are cached by torch-fidelity under the evaluation's cache folder, keyed
by dataset, subset, count and feature-network weights, so they are computed once.

Two registered metrics, one per feature network: "fidelity_mnist" (this project's classifier,
metrics/features.py) and "fidelity_inception" (metrics/inception.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset

from genbench.core import files
from genbench.core.errors import UserError
from genbench.core.schema import SCHEMA_VERSION, Output, Value, entry
from genbench.metrics import features, inception
from genbench.metrics.base import EvalContext, describe_subset, register_metric, subset_indices

NETWORKS = ("mnist", "inception")
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

    name: str  # "mnist" or "inception": the suffix of the metric keys
    extractor: str  # torch-fidelity feature extractor name
    weights_path: Path
    sha256: str
    feature_layer: str  # for FID, KID and PR
    feature_dim: int
    is_layer: str | None  # for IS; None when the network has no logits
    no_is_reason: str | None = None


def resolve_network(name: str, inception_weights: str | os.PathLike | None = None) -> FeatureNetwork:
    """The feature network `name`, its weights located and checksummed. Never downloads."""
    if name == "mnist":
        path = features.WEIGHTS_PATH
        return FeatureNetwork(
            name, features.EXTRACTOR_NAME, path, features.verified_sha256(path),
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


class GreyAsRGB(Dataset):
    """uint8 (N, 1, H, W) images as torch-fidelity wants them: uint8 (3, H, W) per item."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected uint8 (N, 1, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i].expand(3, -1, -1)  # (3, H, W)


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


def cache_name(dataset: str, split: str, n: int, subset_seed: int, network: FeatureNetwork) -> str:
    """torch-fidelity cache entry of a real subset; it appends the extractor name itself. The
    weights' checksum is part of the name so that retrained weights never meet stale features."""
    return f"genbench-{dataset}-{split}-n{n}-s{subset_seed}-{network.sha256[:12]}"


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


def run_torch_fidelity(
    input1: Tensor,
    input2: Tensor | None,
    network: FeatureNetwork,
    *,
    fid: bool,
    kid: bool,
    prc: bool,
    isc: bool,
    input1_cache_name: str | None = None,
    input2_cache_name: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """One torch_fidelity.calculate_metrics call: input1 plays "generated", input2 "real".
    Caching is on only for inputs with a cache name, and only when cache_dir is given."""
    cuda, device_scope = device_kwargs(device)
    n = len(input1) if input2 is None else min(len(input1), len(input2))
    kid_size = kid_subset_size(n)
    kwargs: dict[str, Any] = dict(
        input1=GreyAsRGB(input1),
        input2=None if input2 is None else GreyAsRGB(input2),
        input1_cache_name=input1_cache_name,
        input2_cache_name=input2_cache_name,
        fid=fid,
        kid=kid,
        prc=prc,
        isc=isc,
        feature_extractor=network.extractor,
        feature_layer_fid=network.feature_layer,
        feature_layer_kid=network.feature_layer,
        feature_layer_prc=network.feature_layer,
        # Always a local path: torch-fidelity downloads when given none.
        feature_extractor_weights_path=str(network.weights_path),
        kid_subsets=KID_SUBSETS,
        kid_subset_size=kid_size,
        isc_splits=ISC_SPLITS,
        prc_neighborhood=PRC_NEIGHBORHOOD,
        cuda=cuda,
        batch_size=batch_size,
        cache=cache_dir is not None,
        cache_root=None if cache_dir is None else str(cache_dir),
        rng_seed=seed,
        save_cpu_ram=True,  # no DataLoader worker processes for in-memory tensors; PR distances in blocks
        datasets_download=False,
        verbose=False,
    )
    if isc:
        kwargs["feature_layer_isc"] = network.is_layer
    with device_scope:
        return torch_fidelity.calculate_metrics(**kwargs)


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
    reference_cache_name: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 256,
    allow_few_samples: bool = False,
    protocol_extra: dict[str, Any] | None = None,
    floor: bool = True,
) -> dict[str, Value]:
    """FID, KID, precision, recall and IS of `generated` against `reference` (uint8 (N, 1, H, W)
    each), keyed fid_<net>, kid_<net>, precision_<net>, recall_<net>, is_<net>. ``floor``: each value
    names the real-data floor entry of the same key to be shown beside it."""
    n, n_ref = len(generated), len(reference)
    check_sample_count(min(n, n_ref), network, allow_few_samples)
    has_is = network.is_layer is not None
    scores = run_torch_fidelity(
        generated, reference, network, fid=True, kid=True, prc=True, isc=has_is,
        input2_cache_name=reference_cache_name, device=device, cache_dir=cache_dir, seed=seed,
        batch_size=batch_size,
    )  # fmt: skip
    protocol = base_protocol(network, n, n_ref, seed, device) | (protocol_extra or {})
    fid_protocol = dict(protocol, rank_deficient=True) if min(n, n_ref) < network.feature_dim else protocol
    kid_protocol = dict(
        protocol,
        kid_subset_size=kid_subset_size(min(n, n_ref)),
        kid_subsets=KID_SUBSETS,
        std=scores["kernel_inception_distance_std"],
    )
    prc_protocol = dict(protocol, prc_neighborhood=PRC_NEIGHBORHOOD)
    net = network.name

    def value(key: str, number: float | None, protocol: dict[str, Any], na: str | None = None) -> Value:
        return Value(number, protocol, na=na, floor=key if floor else None)

    values = {
        f"fid_{net}": value(f"fid_{net}", scores["frechet_inception_distance"], fid_protocol),
        f"kid_{net}": value(f"kid_{net}", scores["kernel_inception_distance_mean"], kid_protocol),
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
    if net not in config.feature_networks:
        return not_in_profile(net)
    network = resolve_network(net, config.inception_weights)
    n_reference = min(config.n_samples, len(ctx.data.test))
    check_sample_count(
        min(config.n_samples, n_reference), network, config.allow_few_samples
    )  # before sampling
    reference = reference_images(ctx.data.test, n_reference, config.subset_seed)  # (N, C, H, W) uint8
    return fidelity_scores(
        ctx.samples(), reference, network,
        reference_cache_name=cache_name(ctx.data.name, REFERENCE_SPLIT, n_reference, config.subset_seed, network),
        device=ctx.device, cache_dir=ctx.cache_dir, seed=ctx.seed, batch_size=config.batch_size,
        allow_few_samples=config.allow_few_samples,
        protocol_extra={"subset": describe_subset(len(ctx.data.test), n_reference, config.subset_seed)},
    )  # fmt: skip


def network_ids(config) -> dict[str, str]:
    """Feature network name -> the first 12 hex digits of its weights' SHA-256, for the protocol."""
    return {
        net: resolve_network(net, config.inception_weights).sha256[:12] for net in config.feature_networks
    }


@register_metric("fidelity_mnist", needs=("samples",), outputs=outputs_for("mnist"))
def fidelity_mnist(ctx: EvalContext) -> dict[str, Value]:
    return compute_for_network(ctx, "mnist")


@register_metric("fidelity_inception", needs=("samples",), outputs=outputs_for("inception"))
def fidelity_inception(ctx: EvalContext) -> dict[str, Value]:
    return compute_for_network(ctx, "inception")


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
    n_samples random training images (as if generated, drawn with ``seed``) against the same test
    subset a run's samples meet (``subset_seed``), and IS of those test images."""
    feature_network = resolve_network(network, inception_weights)
    n = min(n_samples, len(data.train), len(data.test))
    test = reference_images(data.test, n, subset_seed)  # (N, C, H, W) uint8
    train_index = subset_indices(len(data.train), n, seed)
    train = (data.train if train_index is None else data.train[train_index.to(data.train.device)]).cpu()
    test_cache = cache_name(data.name, REFERENCE_SPLIT, n, subset_seed, feature_network)
    common = dict(device=device, cache_dir=cache_dir, seed=seed, batch_size=batch_size)
    subset = describe_subset(len(data.test), n, subset_seed)
    values = fidelity_scores(
        train, test, feature_network, reference_cache_name=test_cache, allow_few_samples=allow_few_samples,
        protocol_extra={"compared": "train", "subset": subset}, floor=False, **common,
    )  # fmt: skip
    is_key = f"is_{network}"
    is_protocol = {k: v for k, v in values[is_key].protocol.items() if k != "compared"}
    is_protocol["images"] = REFERENCE_SPLIT  # IS of the test images themselves
    if feature_network.is_layer is None:
        values[is_key] = dataclasses.replace(values[is_key], protocol=is_protocol)
    else:
        # The test images' logits are in the cache from the call above.
        scores = run_torch_fidelity(
            test, None, feature_network, fid=False, kid=False, prc=False, isc=True,
            input1_cache_name=test_cache, **common,
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
