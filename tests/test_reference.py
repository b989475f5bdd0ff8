"""`bench eval --samples A --reference B`, `bench stats B` and `--json`: any image set as the FID
reference, its features and statistics stored as plain numbers, the scores as one flat JSON object."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist
from PIL import Image

from genbench.bench.commands import reference as references
from genbench.core.errors import UserError
from genbench.metrics.fidelity import resolve_network


def centred(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 1, 28, 28) blobs inside the central 14x14 window: a shift moves them off it."""
    x = fake_mnist(n_train=n, n_val=1, n_test=1, seed=seed).train.clone()
    x[..., :7, :], x[..., 21:, :], x[..., :, :7], x[..., :, 21:] = 0, 0, 0, 0
    return x


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    """300 PNGs: the reference B."""
    folder = tmp_path_factory.mktemp("reference") / "B"
    folder.mkdir()
    for i, image in enumerate(centred(300, 3)):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "image-cache"))


def _eval_json(samples, reference, out, *extra):
    result = invoke(
        "eval", "--samples", samples, "--reference", reference, "--network", "mnist", "--out", out, "--json",
        *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result


@pytest.mark.slow
def test_own_images_score_below_the_floor_and_a_shifted_copy_clearly_above(reference_folder, tmp_path):
    b = centred(300, 3)
    np.savez(tmp_path / "own.npz", images=b[:150].numpy())  # half of B's own images
    np.savez(tmp_path / "shifted.npz", images=torch.roll(b[:150], (4, 4), dims=(2, 3)).numpy())
    out = tmp_path / "results"
    own, _ = _eval_json(tmp_path / "own.npz", reference_folder, out)
    shifted, _ = _eval_json(tmp_path / "shifted.npz", reference_folder, out)
    # One flat object: numbers and strings only, the protocol beside the values.
    assert all(isinstance(v, (int, float, str)) or v is None for v in own.values())
    assert own["n_samples"] == 150 and own["n_reference"] == 300
    assert own["reference"] == str(reference_folder.resolve())
    assert own["mnist_sha256"] == resolve_network("mnist").sha256 and "bpd" not in own
    # The printed FID is metrics.json's.
    doc = json.loads((out / own["run_id"] / "metrics.json").read_text())
    assert own["fid_mnist"] == doc["metrics"]["fid_mnist"]["value"]
    assert doc["protocol"]["reference_sha256"] == own["reference_sha256"]
    # The floor beside each value: 150 images of one half of B against the other half.
    floor = own["fid_mnist_floor"]
    assert own["fid_mnist"] <= floor and shifted["fid_mnist_floor"] == floor
    assert shifted["fid_mnist"] > 2 * floor + 3 * shifted["fid_mnist_stderr"]


def test_stats_are_plain_numbers_and_a_planted_pickle_is_never_loaded(reference_folder, tmp_path):
    cache, stats = tmp_path / "cache", tmp_path / "B-stats.npz"
    made = invoke("stats", reference_folder, "--network", "mnist", "--out", stats, "--cache-dir", cache)
    assert made.exit_code == 0, made.output
    with np.load(stats, allow_pickle=False) as stored:
        mu, sigma, n = stored["mu"], stored["sigma"], int(stored["n"])
        assert (
            str(stored["network"]) == "mnist"
            and str(stored["network_sha256"]) == resolve_network("mnist").sha256
        )
    (features_file,) = cache.glob("genbench-ref-*.npz")  # named by the pixels' checksum
    with np.load(features_file, allow_pickle=False) as stored:
        features = stored["features_128"].astype(np.float64)
    assert n == 300 and mu.shape == (128,) and sigma.shape == (128, 128)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)
    # A pickle in the features' place would run code when unpickled: refused, recomputed.
    marker = tmp_path / "pickle-ran"
    features_file.write_bytes(pickle.dumps({"features_128": Planted(str(marker))}))
    again = invoke(
        "stats", reference_folder, "--network", "mnist", "--out", tmp_path / "again.npz", "--cache-dir", cache
    )
    assert again.exit_code == 0, again.output
    assert not marker.exists() and "ignoring the feature cache file" in again.stderr
    with np.load(tmp_path / "again.npz", allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["mu"], mu)
    stats.write_bytes(pickle.dumps({"mu": Planted(str(marker))}))
    with pytest.raises(UserError, match="is not a `bench stats` file"):
        references.read_stats(stats)
    assert not marker.exists()


class Planted:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--reference", "nowhere"], "--reference nowhere: not found; pass a folder"),
        (["--reference", "mnist:bogus"], "--reference mnist:bogus: the split is one of train, val, test"),
        (["--reference", "mnist:test", "--dataset", "mnist"], "--reference replaces the --dataset's test"),
    ],
)
def test_bad_references_are_one_line(tmp_path, args, message):
    np.savez(tmp_path / "a.npz", images=centred(20, 0).numpy())
    line = one_line_error(invoke("eval", "--samples", tmp_path / "a.npz", "--out", tmp_path / "r", *args), 2)
    assert message in line and not (tmp_path / "r").exists()


def test_samples_of_another_shape_than_the_reference_are_one_line(reference_folder, tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((200, 3, 28, 28), np.uint8))
    result = invoke(
        "eval", "--samples", tmp_path / "a.npz", "--reference", reference_folder, "--network", "mnist"
    )
    line = one_line_error(result, 1)
    assert (
        f"images are (3, 28, 28) (C, H, W), but {reference_folder.resolve()} images are (1, 28, 28)" in line
    )


def test_flat_scores_hold_the_computed_values_their_protocol_and_floors_only():
    from genbench.bench.commands.external import flat_scores

    def metric(value, stderr=None, floor=None):
        protocol = {"feature_network": "mnist", "sha256": "ab" * 32} if floor else {"dims": 784}
        return {"value": value, "stderr": stderr, "floor": floor, "protocol": protocol}

    doc = {
        "run_id": "ext-a", "model": "a",
        "protocol": {
            "profile": "quick", "dataset": "mnist", "n_samples": 300, "reference": "test, all", "levels": 256
        },
        "metrics": {"fid_mnist": metric(3.0, 0.1, "fid_mnist"), "is_mnist": metric(2.5, None, "is_mnist"),
                    "bpd": metric(None)},
    }  # fmt: skip
    floors = {"mnist": {"metrics": {"fid_mnist": {"value": 1.0}, "is_mnist": {"value": None}}}}
    assert flat_scores(doc, floors) == {
        "run_id": "ext-a", "model": "a", "profile": "quick", "dataset": "mnist", "n_samples": 300,
        "reference": "test, all", "fid_mnist": 3.0, "fid_mnist_stderr": 0.1, "mnist_sha256": "ab" * 32,
        "fid_mnist_floor": 1.0, "is_mnist": 2.5,
    }  # fmt: skip
    assert "fid_mnist_floor" not in flat_scores(doc)


def test_a_datasets_split_is_a_reference_with_the_datasets_own_network(monkeypatch):
    data = fake_mnist()
    asked = []

    def load(spec, data_dir):
        asked.append((spec.name, data_dir))
        return data

    monkeypatch.setattr(references, "load_dataset", load)
    ref = references.read_reference("fashion-mnist:val", data_dir="d")
    assert asked == [("fashion-mnist", "d")] and torch.equal(ref.images, data.val)
    assert (ref.name, ref.dataset, ref.networks) == ("fashion-mnist:val", "fashion-mnist", ("fashion-mnist",))
    assert ref.protocol() == {
        "reference": "fashion-mnist:val", "reference_sha256": ref.sha256, "n_reference": len(data.val)
    }  # fmt: skip
    assert references.read_reference("cifar10:test").networks == ("inception",)  # its full profile's
