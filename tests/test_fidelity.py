"""Sample-quality metrics through torch-fidelity: invariants, the sample-count guard, n/a entries,
the offline Inception and the real-data floors."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest
import torch

from genbench.core.errors import UserError
from genbench.metrics import METRICS, fidelity, inception
from genbench.metrics.base import EvalConfig, EvalContext

try:
    from tests.test_features import blobs
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from test_features import blobs

SMALL = 150  # just above the mnist network's 128 feature dimensions


@pytest.fixture(scope="module")
def mnist_net():
    return fidelity.resolve_network("mnist")


def scores(a, b, network, **kwargs):
    return {k: v.value for k, v in fidelity.fidelity_scores(a, b, network, **kwargs).items()}


def test_a_set_against_itself_scores_perfectly(mnist_net):
    a, b = blobs(SMALL, 0), blobs(SMALL, 1)
    same = scores(a, a, mnist_net)
    assert abs(same["fid_mnist"]) < 1e-2
    assert abs(same["kid_mnist"]) < 1e-2
    assert same["precision_mnist"] == same["recall_mnist"] == 1.0  # every point lies in its own ball
    other = scores(a, (b.float() * 0.5).to(torch.uint8), mnist_net)  # dimmer blobs elsewhere
    assert other["fid_mnist"] > 1.0 and other["fid_mnist"] > 100 * abs(same["fid_mnist"])


def assert_one_mode_covered(generated, real, network):
    """`generated` resembles only one of the two equal halves of `real`: its samples lie on the real
    manifold (precision near 1) but cover half of it (recall near 0.5), not the other way round."""
    s = scores(generated, real, network)
    assert s["precision_mnist"] > 0.8, s
    assert s["recall_mnist"] < 0.6, s
    assert s["precision_mnist"] - s["recall_mnist"] > 0.3, s


def test_precision_and_recall_when_only_one_mode_is_generated(mnist_net):
    real = torch.cat([blobs(200, 20), 255 - blobs(200, 21)])  # bright blobs and their negatives
    assert_one_mode_covered(blobs(200, 22), real, mnist_net)  # measured: precision 0.94, recall 0.46


def test_precision_and_recall_when_only_zeros_are_generated(mnist_net, mnist_dir):
    from genbench.bench.engine.data import load_mnist

    data = load_mnist(mnist_dir, download_missing=False)
    zeros, ones = data.test[data.test_labels == 0], data.test[data.test_labels == 1]
    real = torch.cat([zeros[:200], ones[:200]])
    assert_one_mode_covered(zeros[200:400], real, mnist_net)  # measured: precision 0.87, recall 0.45


def test_fid_and_is_do_not_depend_on_the_batch_size(mnist_net):
    a, b = blobs(SMALL, 2), blobs(SMALL, 3)

    def fid_and_is(batch_size):
        return fidelity.run_torch_fidelity(
            a, b, mnist_net, fid=True, kid=False, prc=False, isc=True, batch_size=batch_size
        )

    small, large = fid_and_is(16), fid_and_is(SMALL)
    for key in ("frechet_inception_distance", "inception_score_mean"):
        assert small[key] == pytest.approx(large[key], rel=1e-4), key


def test_protocol_is_stated_beside_every_value(mnist_net):
    values = fidelity.fidelity_scores(blobs(SMALL, 4), blobs(SMALL, 5), mnist_net, seed=3)
    assert set(values) == {o.key for o in fidelity.outputs_for("mnist")}
    for key, v in values.items():
        p = v.protocol
        assert v.value is not None and torch.isfinite(torch.tensor(v.value)), key
        assert p["n_samples"] == SMALL and p["feature_network"] == "mnist" and p["seed"] == 3, key
        assert p["device"] == "cpu" and p["sha256"] == mnist_net.sha256, key
    assert values["fid_mnist"].protocol["feature_layer"] == "128"
    assert values["fid_mnist"].protocol["reference"] == "test"
    assert values["is_mnist"].protocol["feature_layer"] == "logits"
    # Subsets of half the set: subsets as large as the set are all the same set, and KID's std is 0.
    assert values["kid_mnist"].protocol["kid_subset_size"] == SMALL // 2
    assert values["kid_mnist"].protocol["std"] > 1e-5
    # FID and KID carry a bootstrap standard error over the generated samples; the others do not
    assert values["fid_mnist"].stderr > 0 and values["kid_mnist"].stderr > 0
    assert values["fid_mnist"].protocol["stderr"].startswith("bootstrap over generated samples")
    assert values["precision_mnist"].stderr is None and values["is_mnist"].stderr is None
    assert 1.0 <= values["is_mnist"].value <= 10.0  # IS is bounded by the number of classes


def test_fid_refuses_fewer_samples_than_feature_dimensions(mnist_net):
    few = blobs(100, 6)
    with pytest.raises(UserError, match=r"rank at most 99.*--allow-few-samples"):
        fidelity.fidelity_scores(few, few, mnist_net)
    allowed = fidelity.fidelity_scores(few, blobs(100, 7), mnist_net, allow_few_samples=True)
    assert allowed["fid_mnist"].value > 0 and allowed["fid_mnist"].protocol["rank_deficient"]
    assert allowed["kid_mnist"].protocol["kid_subset_size"] == 50
    fidelity.check_sample_count(100, mnist_net, allow=True)
    with pytest.raises(UserError, match="at least 10 samples"):
        fidelity.check_sample_count(9, mnist_net, allow=True)  # IS splits and PR neighbours need some


class FakeModel:
    levels = 256  # its samples' pixel levels and shape, as GenerativeModel states them
    image_shape = (1, 28, 28)

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.calls = images, 0

    def sample(self, n, generator=None, mode=None):
        self.calls += 1
        start = (self.calls - 1) * 64
        return self.images[start : start + n]


def make_ctx(model, n_samples, networks, cache_dir=None, test=None):
    config = EvalConfig(n_samples=n_samples, batch_size=64, feature_networks=networks)
    data = SimpleNamespace(test=blobs(400, 9) if test is None else test, name="blobs", levels=256)
    return EvalContext(model, data, config, torch.device("cpu"), seed=1, cache_dir=cache_dir)


def test_registered_metrics_declare_their_outputs():
    for net in fidelity.NETWORKS:
        metric = METRICS[f"fidelity_{net}"]
        assert metric.needs == frozenset({"samples"})
        keys = {o.key: o for o in metric.outputs}
        assert set(keys) == {f"{m}_{net}" for m in ("fid", "kid", "precision", "recall", "is")}
        assert keys[f"fid_{net}"].label == f"FID ({net})" and keys[f"fid_{net}"].higher_is_better is False
        assert keys[f"is_{net}"].higher_is_better and keys[f"recall_{net}"].higher_is_better


def test_network_outside_the_profile_gives_na_without_sampling():
    model = FakeModel(blobs(SMALL, 8))
    ctx = make_ctx(model, SMALL, ("mnist",))
    values = METRICS["fidelity_inception"].compute(ctx)
    assert set(values) == {o.key for o in METRICS["fidelity_inception"].outputs}
    for v in values.values():
        assert v.value is None and "feature network 'inception' not in this profile" in v.na
    assert model.calls == 0
    ctx = make_ctx(model, SMALL, ())
    assert all(v.value is None for v in METRICS["fidelity_mnist"].compute(ctx).values())


def test_registered_metric_compares_samples_with_cached_test_statistics(tmp_path):
    samples = blobs(SMALL, 10)
    ctx = make_ctx(FakeModel(samples), SMALL, ("mnist",), cache_dir=tmp_path)
    first = METRICS["fidelity_mnist"].compute(ctx)
    assert first["fid_mnist"].protocol["n_reference"] == SMALL
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert cached and all(name.startswith(f"genbench-blobs-test-n{SMALL}-s0-") for name in cached)
    from genbench.metrics.feature_cache import cache_name

    assert cached == [cache_name("blobs", "test", SMALL, 0, fidelity.resolve_network("mnist"))]  # one .npz
    # Same numbers when the reference comes from the cache, and the same as computing it directly.
    again = METRICS["fidelity_mnist"].compute(
        make_ctx(FakeModel(samples), SMALL, ("mnist",), cache_dir=tmp_path)
    )
    # The reference is a seeded random subset of the test set, not its first images.
    reference = ctx.data.test[
        torch.randperm(len(ctx.data.test), generator=torch.Generator().manual_seed(0))[:SMALL]
    ]
    direct = fidelity.fidelity_scores(samples, reference, fidelity.resolve_network("mnist"), seed=1)
    first_images = fidelity.fidelity_scores(
        samples, ctx.data.test[:SMALL], fidelity.resolve_network("mnist"), seed=1
    )
    assert first_images["fid_mnist"].value != pytest.approx(first["fid_mnist"].value, rel=1e-3)
    for key in first:
        assert again[key].value == first[key].value
        assert direct[key].value == pytest.approx(first[key].value, rel=1e-5, abs=1e-7)


def test_floors_compare_train_with_test_and_score_test(tmp_path):
    data = SimpleNamespace(train=blobs(5 * SMALL + 7, 11), test=blobs(SMALL + 20, 12), name="blobs")
    floors = fidelity.compute_floors(data, "mnist", SMALL, tmp_path / "cache", "cpu", seed=0)
    path = fidelity.write_floors(tmp_path / "results", floors)
    assert path == tmp_path / "results" / "floors" / f"blobs_mnist_n{SMALL}.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == 2 and doc["dataset"] == "blobs"
    assert doc["feature_network"] == "mnist" and doc["n_samples"] == SMALL
    assert doc["reference"] == f"test, random {SMALL} of {SMALL + 20} (seed 0)" and doc["compared"] == "train"
    assert set(doc["metrics"]) == {o.key for o in fidelity.outputs_for("mnist")}
    fid = doc["metrics"]["fid_mnist"]
    assert fid["label"] == "FID (mnist)" and fid["higher_is_better"] is False and fid["value"] > 0
    assert fid["protocol"]["compared"] == "train" and fid["protocol"]["n_samples"] == SMALL
    # mean and sd over 5 disjoint blocks of a seeded permutation of the training images
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    block = data.train[order[2 * SMALL : 3 * SMALL]]
    test_subset = fidelity.reference_images(data.test, SMALL, subset_seed=0)
    draws = fid["protocol"]["values"]
    assert fid["protocol"]["draws"] == 5 and len(draws) == 5 and len(set(draws)) == 5
    third = scores(block, test_subset, fidelity.resolve_network("mnist"), stderr=False)
    assert draws[2] == pytest.approx(third["fid_mnist"])
    assert fid["value"] == pytest.approx(sum(draws) / 5)
    sd = torch.tensor(draws).std().item()
    assert fid["protocol"]["sd"] == pytest.approx(sd) and fid["stderr"] == pytest.approx(sd / 5**0.5)
    # IS of the test images: the same as scoring them as if they were samples.
    is_entry = doc["metrics"]["is_mnist"]
    assert is_entry["protocol"]["images"] == "test"
    own = fidelity.fidelity_scores(test_subset, data.train, fidelity.resolve_network("mnist"))
    assert is_entry["value"] == pytest.approx(own["is_mnist"].value, rel=1e-6)


def test_inception_weights_from_the_environment_select_torch_fidelity(tmp_path, monkeypatch):
    weights = tmp_path / "weights-inception.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)  # a plain state dict (not really Inception's)
    monkeypatch.setenv(inception.ENV_VAR, str(weights))
    source = inception.resolve_inception()
    assert source.extractor == inception.BUILTIN_EXTRACTOR and source.weights_path == weights
    assert source.is_layer == "logits_unbiased" and source.origin == "env"
    monkeypatch.setenv(inception.ENV_VAR, str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="Inception weights not found"):
        inception.resolve_inception()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached torch-fidelity weights, no environment override, and no network at all."""
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_inception_gives_pool3_features(offline):
    source = inception.resolve_inception()
    assert source.extractor == inception.OFFLINE_EXTRACTOR and source.is_layer is None
    assert source.weights_path.name == "default_1.pt"
    extractor = inception.OfflineInceptionExtractor(inception.OFFLINE_EXTRACTOR, ["2048"])
    images = blobs(2, 13).expand(-1, 3, -1, -1)  # (2, 3, 28, 28)
    (feats,) = extractor(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # average of ReLU outputs
    assert not torch.allclose(feats[0], feats[1])
    torch.testing.assert_close(extractor(images[1:])[0], feats[1:], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_offline_inception_metrics_have_no_is(offline):
    network = fidelity.resolve_network("inception")
    values = fidelity.fidelity_scores(blobs(10, 14), blobs(10, 15), network, allow_few_samples=True)
    assert values["fid_inception"].value > 0 and values["fid_inception"].protocol["feature_layer"] == "2048"
    assert values["kid_inception"].protocol["feature_extractor"] == inception.OFFLINE_EXTRACTOR
    assert values["is_inception"].value is None and values["is_inception"].na == inception.NO_LOGITS_REASON
    with pytest.raises(UserError, match="2048-dim"):
        fidelity.fidelity_scores(blobs(10, 14), blobs(10, 15), network, allow_few_samples=False)


@pytest.mark.slow
def test_inception_score_of_mnist_test_set_with_the_mnist_network(mnist_net, mnist_dir):
    from genbench.bench.engine.data import load_mnist

    test = load_mnist(mnist_dir, download_missing=False).test
    result = fidelity.run_torch_fidelity(test, None, mnist_net, fid=False, kid=False, prc=False, isc=True)
    assert 9.5 < result["inception_score_mean"] <= 10.0  # published for MNIST classifiers: 9.88
