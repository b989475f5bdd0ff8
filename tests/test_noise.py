"""The noise stated beside sample-quality numbers: the bootstrap standard error of FID and KID
against their spread over independent sample sets, and draws pooled into mean, sd and stderr."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from genbench.core.schema import Value
from genbench.metrics import noise


def test_bootstrap_stderr_of_fid_matches_its_spread_over_independent_sample_sets():
    """Features of 'generated' sets drawn from a shifted Gaussian against a fixed reference: the sd
    of FID over 30 independent sets is what one set's bootstrap must estimate (within its noise)."""
    g = torch.Generator().manual_seed(0)
    d, n = 8, 400
    reference = torch.randn(2000, d, generator=g, dtype=torch.float64)
    reference_stats = fid_features_to_statistics(reference)
    sets = [torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + 0.3 for _ in range(30)]
    fids = [
        float(
            fid_statistics_to_metric(fid_features_to_statistics(s), reference_stats, verbose=False)[
                "frechet_inception_distance"
            ]
        )
        for s in sets
    ]
    spread = statistics.stdev(fids)
    estimates = [noise.bootstrap_stderr(s, reference, 200, seed=i)["fid"] for i, s in enumerate(sets[:4])]
    assert 0.5 * spread < statistics.fmean(estimates) < 2 * spread, (estimates, spread)
    errors = noise.bootstrap_stderr(sets[0], reference, 200, seed=0)
    assert errors == noise.bootstrap_stderr(sets[0], reference, 200, seed=0)  # seeded
    assert errors["kid"] > 0


def test_pool_draws_gives_mean_sd_and_stderr_and_keeps_unmeasured_values():
    draws = [
        {"fid": Value(v, {"seed": 0, "n_samples": 10}), "is": Value(None, {}, na="no logits")}
        for v in (1.0, 2.0, 4.0, 5.0, 3.0)
    ]
    pooled = noise.pool_draws(draws)
    fid = pooled["fid"]
    assert fid.value == pytest.approx(3.0) and fid.protocol["draws"] == 5
    assert fid.protocol["sd"] == pytest.approx(statistics.stdev([1, 2, 4, 5, 3]))
    assert fid.stderr == pytest.approx(fid.protocol["sd"] / 5**0.5)
    assert fid.protocol["values"] == [1.0, 2.0, 4.0, 5.0, 3.0] and fid.protocol["n_samples"] == 10
    assert pooled["is"].value is None and pooled["is"].na == "no logits"
