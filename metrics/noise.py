"""The sampling noise of sample-quality numbers: a bootstrap standard error of FID and KID at a given
sample count, and real-data floors pooled over disjoint draws.

Which noise: every model of a protocol meets the same fixed reference (the seeded test subset), so
what differs between two families' FIDs at n samples is the draw of their n samples. The standard
error therefore resamples the generated samples (a bootstrap over samples, the reference held
fixed), not the reference. Each resample's FID and KID come from torch-fidelity's own functions on
the cached features; nothing re-extracts an image.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import torch
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from genbench.core.schema import Value

BOOTSTRAP_RESAMPLES = 10  # enough for the size of the noise (~25% relative error of the sd), cheap
KID_BOOTSTRAP_SUBSETS = 10  # KID subsets per resample (the headline KID keeps torch-fidelity's 100)
FLOOR_DRAWS = 5  # disjoint draws of training images per real-data floor


def bootstrap_stderr(
    generated: Tensor, reference: Tensor, kid_subset_size: int, seed: int
) -> dict[str, float]:
    """{"fid", "kid"}: the sample standard deviation of FID and KID over BOOTSTRAP_RESAMPLES resamples
    (with replacement) of the generated features (N, d), against the fixed reference features: the
    standard error of each number at this sample count."""
    g = torch.Generator().manual_seed(seed)
    reference_stats = fid_features_to_statistics(reference)
    fids, kids = [], []
    for b in range(BOOTSTRAP_RESAMPLES):
        resample = generated[torch.randint(len(generated), (len(generated),), generator=g)]
        fid = fid_statistics_to_metric(fid_features_to_statistics(resample), reference_stats, verbose=False)
        kid = kid_features_to_metric(
            resample, reference, kid_subsets=KID_BOOTSTRAP_SUBSETS, kid_subset_size=kid_subset_size,
            rng_seed=seed + b, verbose=False,
        )  # fmt: skip
        fids.append(float(fid["frechet_inception_distance"]))
        kids.append(float(kid["kernel_inception_distance_mean"]))
    return {"fid": statistics.stdev(fids), "kid": statistics.stdev(kids)}


def bootstrap_protocol(kid_subset_size: int) -> dict[str, Any]:
    return {
        "stderr": f"bootstrap over generated samples, {BOOTSTRAP_RESAMPLES} resamples, reference fixed",
        "stderr_kid_subsets": KID_BOOTSTRAP_SUBSETS,
        "stderr_kid_subset_size": kid_subset_size,
    }


def pool_draws(draws: list[dict[str, Value]]) -> dict[str, Value]:
    """Per key, the mean over draws, its "stderr" (sd / sqrt(draws)) and the protocol's "draws",
    "sd" (the spread of one draw: the noise of a single run at this count) and "values"; a key some
    draw lacks a number for keeps the first draw's Value."""
    pooled = {}
    for key, first in draws[0].items():
        numbers = [d[key].value for d in draws]
        if any(v is None for v in numbers) or len(numbers) < 2:
            pooled[key] = first
            continue
        sd = statistics.stdev(numbers)
        protocol = dict(first.protocol, draws=len(numbers), sd=sd, values=numbers)
        protocol.pop("seed", None)
        pooled[key] = dataclasses.replace(
            first, value=statistics.fmean(numbers), protocol=protocol, stderr=sd / len(numbers) ** 0.5
        )
    return pooled
