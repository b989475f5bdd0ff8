"""The literature's numbers beside ours: a cited table, and the entries a run's protocol lines up with."""

from __future__ import annotations

import json

import pytest

from genbench.bench.engine.data import DATASETS
from genbench.metrics import METRICS, fidelity
from genbench.metrics.published import PUBLISHED, published_for

COLUMNS = {o.key for metric in METRICS.values() for o in metric.outputs}


def protocol(dataset="mnist", levels=256, test_images=10_000, n_samples=10_000, networks=("mnist",), **extra):
    """A metrics.json protocol block (feature networks as evaluate writes them: name -> sha prefix)."""
    return {
        "dataset": dataset, "levels": levels, "test_images": test_images, "n_samples": n_samples,
        "feature_networks": {n: "0123456789ab" for n in networks}, "iwae_k": 100, "iwae_images": 500,
        **extra,
    }  # fmt: skip


@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda e: f"{e.dataset}-{e.metric}-{e.model}")
def test_every_entry_is_cited_and_lines_up_with_a_column_we_report(entry):
    assert entry.source and entry.url.startswith("https://") and entry.protocol
    assert entry.metric in COLUMNS
    assert DATASETS[entry.dataset].levels == entry.levels
    assert (entry.feature_network is None) == (entry.n_samples is None)
    if entry.feature_network is not None:
        assert entry.feature_network in fidelity.NETWORKS and entry.metric.endswith(entry.feature_network)


def test_one_entry_per_dataset_levels_metric_network_and_model():
    keys = [(e.dataset, e.levels, e.metric, e.feature_network, e.model) for e in PUBLISHED]
    assert len(keys) == len(set(keys))


def test_the_issues_numbers_are_there():
    values = {(e.dataset, e.metric, e.model): (e.value, e.spread) for e in PUBLISHED}
    for model, bpd in (("RealNVP", 1.06), ("Glow", 1.05), ("FFJORD", 0.99), ("Residual Flow", 0.97)):
        assert values["mnist", "bpd", model] == (bpd, None)
    assert values["mnist", "bpd", "Transformer (softmax attention)"] == (0.621, None)
    families = {(e.dataset, e.model): e.family for e in PUBLISHED}
    assert families["mnist", "Glow"] == families["cifar10", "Glow"] == "glow"  # its own row, not RealNVP's
    assert families["mnist", "Transformer (softmax attention)"] == "transformer"
    assert values["binarized-mnist", "nll_nats", "PixelCNN"][0] == 81.30
    assert values["binarized-mnist", "nll_nats", "Gated PixelCNN (reimplementation)"][0] == 81.50
    assert values["binarized-mnist", "iwae_nats", "IWAE (k=50)"][0] == 87.10
    for model, fid, spread in (
        ("NS-GAN", 6.8, 0.5),
        ("WGAN", 6.7, 0.4),
        ("VAE", 16.6, 0.4),
        ("2-Stage VAE", 12.6, 1.5),
    ):
        assert values["mnist", "fid_inception", model] == (fid, spread)


def test_entries_follow_dataset_levels_and_feature_networks():
    binary = published_for(protocol("binarized-mnist", 2))
    assert binary and all(e["dataset"] == "binarized-mnist" and e["levels"] == 2 for e in binary)
    assert {e["metric"] for e in binary} == {"nll_nats", "iwae_nats"}
    assert published_for(protocol("binarized-mnist", 256)) == []  # levels are part of the protocol
    eight_bit = published_for(protocol())
    assert {e["metric"] for e in eight_bit} == {"bpd"}  # no Inception in this run: no FID rows
    with_inception = published_for(protocol(networks=("mnist", "inception")))
    assert {e["metric"] for e in with_inception} == {"bpd", "fid_inception"}
    assert published_for(protocol("fashion-mnist")) == []
    json.dumps(with_inception)  # plain data for the report


def test_match_is_exact_only_when_the_measurement_is_the_same():
    full = {e["model"]: e for e in published_for(protocol(networks=("mnist", "inception")))}
    assert full["RealNVP"]["match"] == "exact" and full["NS-GAN"]["match"] == "exact"
    assert full["RealNVP"]["differences"] == [] and full["RealNVP"]["notes"]  # training differs: a note
    quick = {
        e["model"]: e
        for e in published_for(protocol(test_images=2000, n_samples=1000, networks=("inception",)))
    }
    assert quick["RealNVP"]["match"] == "approximate"
    assert any("2000 test images" in d for d in quick["RealNVP"]["differences"])
    assert any("10,000 samples there, 1000 here" in d for d in quick["NS-GAN"]["differences"])
    binary = {e["model"]: e for e in published_for(protocol("binarized-mnist", 2))}
    assert any("statically binarized" in d for d in binary["PixelCNN"]["differences"])
    assert any("k=5,000" in d and "k=100" in d for d in binary["IWAE (k=50)"]["differences"])
    assert all(e["match"] == "approximate" for e in binary.values())
